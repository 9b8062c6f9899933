"""Evaluate tab: perplexity and bits per byte of a text, and multiple-choice tasks, for several models and precisions
at once, through the shared chat engines and the heavy-work queue."""
from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from core.chat.serving import PRECISION_CHOICES
from core.common.errors import InputError, PlaygroundError, check_number
from core.common.stopping import RunControl
from core.common.uploads import UploadError, read_text_file
from core.evaluate.multiple_choice import builtin_tasks, load_builtin, read_task
from core.evaluate.runs import (
    MAX_MODELS,
    PERPLEXITY,
    EvaluateSettings,
    EvaluationRun,
    History,
    evaluate_choices,
    evaluate_perplexity,
    model_specs,
)
from core.models.paths import assets_dir
from core.models.registry import CAUSAL_LM
from ui.components import HEAVY, STOP, progress_callback, refresh_picker, stop_run

BUILT_IN, PASTED, UPLOADED = "Built-in sample (assets/eval_text.txt)", "Pasted text", "Uploaded .txt file"
UPLOADED_TASK = "Uploaded file (JSONL, JSON or CSV)"
MAX_TEXT_BYTES = 2 * 2**20
TASK_FORMAT = ("One item per row with `question` (what the model reads, e.g. `Question: ...\\nAnswer:`), `choices` "
               "(a list; in a CSV a JSON list or choices separated by `|`), `answer` (the index from 0, or the text of "
               "the right choice) and optionally `prefix` (a few-shot prefix for that row). Every row needs the same "
               "number of choices; each is scored as the continuation `\" \" + choice`.")
PPL_COLUMNS = ["model_id", "precision", "runtime", "status", "perplexity", "bits_per_byte", "tokens", "bytes", "windows",
               "context", "stride", "seconds", "message"]
CHOICE_COLUMNS = ["model_id", "precision", "runtime", "status", "acc", "acc_norm", "items", "seconds", "message"]


# ---- what is shown ------------------------------------------------------------------------------------------------
def _interval(estimate, low, high) -> str:
    return "" if pd.isna(estimate) else f"{estimate:.3f} [{low:.3f}, {high:.3f}]"


def results_table(run: EvaluationRun) -> pd.DataFrame:
    frame = run.frame()
    if run.kind == PERPLEXITY:
        columns = PPL_COLUMNS
    else:
        columns = CHOICE_COLUMNS
        for name in ("acc", "acc_norm"):
            if name in frame:
                frame[name] = [_interval(*r) for r in frame[[name, f"{name}_low", f"{name}_high"]].itertuples(False)]
    frame = frame[[c for c in columns if c in frame and (c != "message" or frame[c].astype(bool).any())]]
    return frame.round({"perplexity": 3, "bits_per_byte": 4, "seconds": 1})


def results_figure(run: EvaluationRun) -> go.Figure:
    """Bits per byte per model (lower is better), or acc and acc_norm with their 95 % intervals."""
    rows = [r for r in run.rows if r.status == "ok"]
    labels = [f"{r.model_id.rstrip('/').split('/')[-1]} [{r.precision}]" for r in rows]
    if run.kind == PERPLEXITY:
        fig = go.Figure(go.Bar(x=labels, y=[r.bits_per_byte for r in rows], marker_color="#6366f1",
                               text=[f"{r.bits_per_byte:.3f} bpb · ppl {r.perplexity:.2f}" for r in rows],
                               hovertext=[f"{r.tokens:,} tokens, {r.bytes:,} bytes, windows of {r.context} tokens, stride "
                                          f"{r.stride}" for r in rows]))
        fig.update_layout(title=f"Bits per byte on {run.data} (lower is better)", yaxis_title="bits per byte")
    else:
        fig = go.Figure([go.Bar(name=name, x=labels, y=[getattr(r, name) for r in rows],
                                error_y={"type": "data", "symmetric": False,
                                         "array": [getattr(r, f"{name}_high") - getattr(r, name) for r in rows],
                                         "arrayminus": [getattr(r, name) - getattr(r, f"{name}_low") for r in rows]})
                         for name in ("acc", "acc_norm")])
        fig.update_layout(title=f"{run.data}: accuracy with 95 % bootstrap intervals", yaxis_title="share correct",
                          yaxis_range=[0, 1], barmode="group")
    fig.update_layout(height=380, margin={"l": 50, "r": 20, "t": 50, "b": 40})
    return fig


def _status(run: EvaluationRun, done: bool, stopped_because: str = "") -> str:
    ok = [r for r in run.rows if r.status == "ok"]
    head = f"Stopped ({stopped_because})" if stopped_because else "Done" if done else "Running"
    lines = [f"**{head}**: {len(ok)} of {len(run.rows)} model runs measured on **{run.data}** "
             f"(sha256 `{run.data_sha256[:12]}…`)."]
    if ok and run.kind == PERPLEXITY:
        lines.append(f"Each model read its own tokens of the text ({', '.join(f'{r.tokens + 1:,}' for r in ok)}; "
                     f"{ok[0].bytes:,} bytes scored) in windows of at most {run.settings['max_length']} tokens moving "
                     f"{run.settings['stride']} at a time; every token after the first is scored once. Bits per byte "
                     "compare models whose tokenizers differ; perplexity does not.")
    lines += [f"⚠️ {r.model_id} [{r.precision}]: {r.message}" for r in run.rows if r.status != "ok"]
    return "\n\n".join(lines)


class EvaluateHandlers:
    """Event handlers: turn widget values into core calls and runs into component values (returned by name)."""

    def __init__(self, shell, c: dict[str, gr.Component]):
        self.services, self.c = shell.services, c

    def _text(self, source: str, pasted: str, upload) -> tuple[str, str]:
        if source == PASTED:
            if len((pasted or "").encode()) > MAX_TEXT_BYTES:
                raise InputError(f"The pasted text is over {MAX_TEXT_BYTES // 2**20} MiB: upload a shorter part.")
            return pasted or "", "pasted text"
        if source == UPLOADED:
            if not upload:
                raise UploadError("Upload a .txt file, or choose the built-in sample.")
            return read_text_file(upload, MAX_TEXT_BYTES), Path(upload).name
        return (assets_dir() / "eval_text.txt").read_text(encoding="utf-8"), "assets/eval_text.txt"

    @staticmethod
    def _task(name: str, upload):
        if name == UPLOADED_TASK:
            if not upload:
                raise UploadError("Upload a task file (JSONL, JSON or CSV), or pick one of the team's tasks.")
            return read_task(upload)
        return load_builtin(name)

    def _shown(self, run: EvaluationRun, status: str, history: History | None = None) -> dict:
        shown = {self.c["table"]: results_table(run), self.c["plot"]: results_figure(run), self.c["status"]: status}
        if history is not None:
            shown[self.c["history"]] = history
            shown[self.c["history_table"]] = history.frame()
            if run.item_results:
                path = Path(tempfile.mkdtemp(prefix="evaluate_")) / "per_item_results.csv"
                run.items_frame().to_csv(path, index=False)
                shown[self.c["items"]] = gr.update(value=str(path), visible=True)
        return shown

    def _run(self, control: RunControl, history: History, what: str, start, progress: gr.Progress):
        """Run through the heavy-work queue; the finished run joins this user's history."""
        try:
            with self.services.work.run(control, what, progress_callback(progress)) as stop:
                run = None
                for run in start(stop):
                    yield self._shown(run, _status(run, done=False))
            if run is None:
                yield {self.c["status"]: f"Stopped before the first model ({stop.reason})."}
                return
            history = History(history.runs + [run])
            yield self._shown(run, _status(run, True, stop.reason if stop.stopped else ""), history)
        except PlaygroundError as err:
            gr.Warning(str(err))
            yield {self.c["status"]: f"❌ {err}"}

    def run_perplexity(self, control: RunControl, history: History, models, precisions, source, pasted, upload,
                       max_length, stride, progress=gr.Progress()):
        def start(stop):
            settings = EvaluateSettings(max_length=max_length, stride=stride)
            text, name = self._text(source, pasted, upload)
            return evaluate_perplexity(self.services.chat, model_specs(models or [], precisions or []), text, name,
                                       settings, progress_callback(progress), stop)

        yield from self._run(control, history, "perplexity evaluation", start, progress)

    def run_choices(self, control: RunControl, history: History, models, precisions, task_name, upload, fewshot,
                    resamples, progress=gr.Progress()):
        def start(stop):
            settings = EvaluateSettings(fewshot=fewshot or "", resamples=check_number("Bootstrap resamples",
                                                                                      resamples, 100, 20_000, True))
            task = self._task(task_name, upload)
            return evaluate_choices(self.services.chat, model_specs(models or [], precisions or []), task, settings,
                                    progress_callback(progress), stop)

        yield from self._run(control, history, "multiple-choice evaluation", start, progress)

    @staticmethod
    def describe_task(name: str) -> str:
        if name == UPLOADED_TASK:
            return TASK_FORMAT
        task = next(t for t in builtin_tasks() if t.name == name)
        return f"{task.description} File: `assets/eval_tasks/{task.file}`."

    def export(self, history: History) -> dict:
        if not history.runs:
            return {self.c["status"]: "Nothing to export yet: run an evaluation first."}
        csv, js = history.write(Path(tempfile.mkdtemp(prefix="evaluate_runs_")))
        return {self.c["exports"]: gr.update(value=[str(csv), str(js)], visible=True),
                self.c["status"]: f"Exported {len(history.runs)} run(s) with model ids, precisions, settings and the "
                                  "sha256 of the data."}


def build_tab(shell) -> dict[str, gr.Component]:
    services = shell.services
    c: dict[str, gr.Component] = {}
    gr.Markdown("Score models the way the field does: **perplexity and bits per byte** of a text, and **multiple-choice "
                "tasks** by log-likelihood as lm-evaluation-harness scores them (`acc`, `acc_norm`), for several models "
                "and precisions in one table. Models run on the same engines as Chat, so evaluating never stops "
                "anyone's replies.")
    with gr.Row():
        choices = services.model_choices(CAUSAL_LM)
        c["models"] = gr.Dropdown(choices=choices, value=[choices[0][1]] if choices else [], multiselect=True,
                                  allow_custom_value=True, label="Models",
                                  info="Pick presets, or type Hugging Face ids or local folders")
        c["precisions"] = gr.CheckboxGroup(list(PRECISION_CHOICES), value=["auto"], label="Precisions",
                                           info=f"auto = what Chat serves (measured). Every model at every precision: "
                                                f"at most {MAX_MODELS} runs")
    c["models"].focus(refresh_picker(services, CAUSAL_LM), None, c["models"], queue=False, api_visibility="private")
    with gr.Tabs():
        with gr.Tab("Perplexity", id="evaluate-perplexity"):
            c["source"] = gr.Radio([BUILT_IN, PASTED, UPLOADED], value=BUILT_IN, label="Text")
            c["pasted"] = gr.Textbox(lines=5, label="Pasted text", placeholder="Paste any text here")
            c["text_file"] = gr.File(label="Text file (.txt, up to 2 MiB)", file_types=[".txt"], type="filepath",
                                     height=110)
            with gr.Row():
                c["max_length"] = gr.Slider(32, 4096, value=512, step=32, label="Window (tokens of context)",
                                            info="Less where a model reads fewer positions; the table says what each used")
                c["stride"] = gr.Slider(16, 4096, value=256, step=16, label="Stride (tokens each window moves)",
                                        info="Smaller: more context for each scored token, more work")
            c["run_ppl"] = gr.Button("Measure perplexity", variant="primary")
        with gr.Tab("Multiple choice", id="evaluate-choice"):
            names = [t.name for t in builtin_tasks()]
            c["task"] = gr.Radio(names + [UPLOADED_TASK], value=names[0], label="Task",
                                 info="The three small tasks were written by this app's team: not a published benchmark")
            c["task_info"] = gr.Markdown(EvaluateHandlers.describe_task(names[0]))
            c["task_file"] = gr.File(label="Task file (up to 5 MiB, 5,000 items)", file_types=[".jsonl", ".json", ".csv"],
                                     type="filepath", height=110)
            with gr.Row():
                c["fewshot"] = gr.Textbox(lines=3, label="Few-shot prefix (optional)", scale=3,
                                          placeholder="Worked examples put before every question")
                c["resamples"] = gr.Number(1000, precision=0, label="Bootstrap resamples", scale=1)
            c["run_choice"] = gr.Button("Score the task", variant="primary")
    c["stop"] = gr.Button("Stop", variant="stop")
    c["status"] = gr.Markdown()
    c["table"] = gr.Dataframe(label="Results", interactive=False, wrap=True)
    c["plot"] = gr.Plot(label="Chart")
    c["items"] = gr.File(label="Per-item results (CSV)", visible=False)
    with gr.Accordion("Your runs in this session (export with model ids, precisions, settings and data hash)",
                      open=False):
        c["history_table"] = gr.Dataframe(interactive=False, wrap=True)
        c["export"] = gr.Button("Export all runs as CSV and JSON")
        c["exports"] = gr.File(label="Exports", file_count="multiple", visible=False)
    c["control"], c["history"] = gr.State(RunControl()), gr.State(History())
    handlers = EvaluateHandlers(shell, c)

    shown = [c[k] for k in ("table", "plot", "status", "items", "history", "history_table")]
    c["run_ppl"].click(handlers.run_perplexity, [c[k] for k in ("control", "history", "models", "precisions", "source",
                                                                "pasted", "text_file", "max_length", "stride")],
                       shown, api_name="evaluate_perplexity", **HEAVY)
    c["run_choice"].click(handlers.run_choices, [c[k] for k in ("control", "history", "models", "precisions", "task",
                                                                "task_file", "fewshot", "resamples")],
                          shown, api_name="evaluate_choices", **HEAVY)
    c["task"].change(handlers.describe_task, c["task"], c["task_info"], api_name="evaluate_task_info")
    c["stop"].click(lambda control: stop_run(control, "batch"), c["control"], c["status"], api_name="evaluate_stop",
                    **STOP)
    c["export"].click(handlers.export, c["history"], [c["exports"], c["status"]], api_name="evaluate_export")
    return c
