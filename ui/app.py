"""The Blocks that hold every tab, built from the tab modules in this package."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import gradio as gr

from core.models.paths import assets_dir
from core.services import Services
from ui import lessons, readiness_view
from ui.components import guard

# tab name -> (module with build_tab(shell), label). Order is the order on screen.
TABS: dict[str, tuple[str, str]] = {
    "chat": ("ui.chat_tab", "💬 Chat"),
    "classify": ("ui.classify_tab", "🏷️ Classify & NER"),
    "finetune": ("ui.finetune_tab", "🎓 Fine-tune"),
    "quantize": ("ui.quantize_tab", "🗜️ Quantize"),
    "evaluate": ("ui.evaluate_tab", "📏 Evaluate"),
    "explain": ("ui.explain_tab", "🔍 Explain"),
    "bias": ("ui.bias_tab", "⚖️ Bias"),
}


@dataclass
class Shell:
    """What a tab builder gets: the shared services, the tab group, the page, and the tabs built before it."""

    services: Services
    tabs: gr.Tabs
    demo: gr.Blocks  # for a tab's page-load events
    components: dict[str, dict[str, gr.Component]] = field(default_factory=dict)
    notes: dict[str, gr.Markdown] = field(default_factory=dict)  # each tab's slot for a lesson's notes
    # Made with render=False by a tab, rendered at the page's root: a BrowserState inside a tab that is not open
    # reads as empty until the tab is opened, too late for a page-load event.
    page_level: list[gr.Component] = field(default_factory=list)


def header(services: Services) -> str:
    mode = "offline (local and packaged models only)" if services.offline else "online (any Hugging Face model id)"
    return (f"# 🧪 LLM Playground\nExplore open language models: chat, classify, fine-tune, quantize, evaluate, "
            f"explain and probe for bias. Running on **{services.manager.device.describe()}**, {mode}.")


def build_app(services: Services, tabs: tuple[str, ...] = tuple(TABS)) -> gr.Blocks:
    unknown = set(tabs) - set(TABS)
    if unknown:
        raise ValueError(f"unknown tabs {sorted(unknown)}; choose from {list(TABS)}")
    tab_labels = {name: TABS[name][1] for name in tabs}
    with gr.Blocks(title="LLM Playground") as demo:
        gr.Markdown(header(services))
        notice, timer = readiness_view.build(services)
        with gr.Accordion("📘 Lessons for a class", open=False):
            lesson_picker, open_lesson = lessons.lesson_menu()
        with gr.Tabs() as tab_group:
            shell = Shell(services, tab_group, demo)
            for name in (t for t in TABS if t in tabs):
                module, label = TABS[name]
                with gr.Tab(label, id=name, elem_id=f"tab-{name}"):
                    shell.notes[name] = lessons.notes_slot(name)
                    shell.components[name] = importlib.import_module(module).build_tab(shell)
        for component in shell.page_level:
            component.render()
        lessons.wire(shell, demo, lesson_picker, open_lesson)
        readiness_view.wire(services, demo, notice, timer, tab_labels)
    for block_fn in demo.fns.values():  # every handler: bad input gets its message, a bug a short one and a log
        if block_fn.fn is not None:
            block_fn.fn = guard(block_fn.fn)
    return demo


def launch_options() -> dict:
    """Theme and CSS go to launch() in gradio 6."""
    return {"theme": gr.themes.Soft(primary_hue="indigo"), "css_paths": [assets_dir() / "style.css"]}
