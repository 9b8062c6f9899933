"""The "getting ready" notice above the tabs: what start-up is preparing for which tabs, with its real progress.

It polls core's Readiness with a gr.Timer (a plain request, not the queue) and stops polling and hides once
everything is ready."""
from __future__ import annotations

import html

import gradio as gr

from core.common.readiness import ReadinessReport, StageState, StageStatus
from core.services import Services

POLL_S = 1.0


def stage_line(stage: StageStatus, tab_labels: dict[str, str]) -> str:
    tabs = ", ".join(tab_labels[t] for t in stage.tabs if t in tab_labels)
    head = f"<b>{html.escape(stage.label)}</b> <span class='notice'>(for {html.escape(tabs)})</span>"
    if stage.state is StageState.WAITING:
        return f"<li>{head}: waits its turn</li>"
    if stage.state is StageState.READY:
        return f"<li>{head}: ✅ ready ({stage.seconds:.0f} s)</li>"
    if stage.state is StageState.FAILED:
        return (f"<li>{head}: ⚠️ could not be prepared ({html.escape(stage.error)}); it is tried again, with its "
                "message, when a tab first needs it</li>")
    return (f"<li>{head}: <progress max='1' value='{stage.fraction:.3f}'></progress> {stage.fraction:.0%} · "
            f"{html.escape(stage.message)} <span class='notice'>({stage.seconds:.0f} s so far)</span></li>")


def readiness_html(report: ReadinessReport, tab_labels: dict[str, str]) -> str:
    """Empty when there is nothing to say (everything ready, or nothing prepared at start)."""
    if report.ready:
        return ""
    title = ("<b>⏳ Getting ready: preparing the default models, one after the other.</b> The first start on a "
             "machine converts, measures and trains them (a few minutes); later starts load them in seconds. You can "
             "look around now: what you run in these tabs starts as soon as its model is ready."
             if not report.settled else "<b>Start-up preparation finished with a problem:</b>")
    lines = "".join(stage_line(s, tab_labels) for s in report.stages)
    return f"<div class='readiness' role='status' aria-live='polite'><p>{title}</p><ul>{lines}</ul></div>"


def build(services: Services) -> tuple[gr.HTML, gr.Timer]:
    """The notice and its timer, inside the Blocks; `wire` connects them once the Blocks exist."""
    notice = gr.HTML("", visible=False, elem_id="readiness")
    timer = gr.Timer(POLL_S, active=not services.readiness.report().ready)
    return notice, timer


def wire(services: Services, demo: gr.Blocks, notice: gr.HTML, timer: gr.Timer, tab_labels: dict[str, str]) -> None:
    def poll():
        report = services.readiness.report()
        shown = readiness_html(report, tab_labels)
        return gr.update(value=shown, visible=bool(shown)), gr.Timer(active=not report.settled)

    # A page opened later gets the current state at once, and a page opened when all is ready never polls.
    demo.load(poll, None, [notice, timer], queue=False, api_visibility="private")
    timer.tick(poll, None, [notice, timer], queue=False, api_visibility="private")
