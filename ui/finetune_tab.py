"""Fine-tune tab: upload data, train in the background with live curves, read the metrics, share the model."""
from __future__ import annotations

import html
import uuid
from dataclasses import dataclass

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from core.common.errors import InputError, PlaygroundError
from core.common.uploads import MAX_UPLOAD_BYTES
from core.finetune.data import LABEL_NAMES, TEXT_NAMES, DataRequest, columns, guess_columns, preview
from core.finetune.hub import push_to_hub, zip_model
from core.finetune.jobs import DONE, FAILED, Job, JobRegistry
from core.finetune.metrics import ClassificationMetrics, EntityMetrics, Metrics, PerplexityMetrics
from core.finetune.progress import ProgressSnapshot
from core.finetune.tasks import HYPERPARAMETER_FIELDS, Hyperparameters, default_hyperparameters
from core.finetune.training import FineTuneResult, FineTuneSpec, train_job
from core.models.heads import HEADS
from core.models.paths import assets_dir
from core.models.registry import (
    CAUSAL_LM,
    DEFAULT_CHAT_MODEL,
    ENCODER,
    OFFLINE_CLASSIFIER,
    OFFLINE_ENCODER,
    TEXT_CLASSIFICATION,
    TOKEN_CLASSIFICATION,
)
from core.services import Services
from ui.components import model_picker

TASK_CHOICES = [("Text classification", TEXT_CLASSIFICATION), ("Causal LM (text or prompt → response)", CAUSAL_LM),
                ("Named entities (token classification)", TOKEN_CLASSIFICATION)]
# Which pickers' models each task can start from: classification heads go on encoders and decoders alike.
BASES = {TEXT_CLASSIFICATION: (ENCODER, TEXT_CLASSIFICATION, CAUSAL_LM), CAUSAL_LM: (CAUSAL_LM,),
         TOKEN_CLASSIFICATION: (ENCODER, TOKEN_CLASSIFICATION)}
DEFAULT_BASE = {TEXT_CLASSIFICATION: OFFLINE_ENCODER, CAUSAL_LM: DEFAULT_CHAT_MODEL, TOKEN_CLASSIFICATION: OFFLINE_ENCODER}
EXAMPLES = {TEXT_CLASSIFICATION: "sentiment_reviews.csv", CAUSAL_LM: "instructions.jsonl",
            TOKEN_CLASSIFICATION: "ner_tiny.txt"}
# Examples the one-click example trains on, so that it finishes in a few minutes on 2 CPU cores (0: all of them;
# measured with bench/finetune_example.py); setting "Examples to use" to 0 is the full run.
EXAMPLE_SAMPLE = {TEXT_CLASSIFICATION: 1000, CAUSAL_LM: 0, TOKEN_CLASSIFICATION: 0}
PLAIN, PAIRS = "Plain text", "Prompt / response"
TERM_NAMES = {"kd_loss": "train KL to teacher", "ce_loss": "train cross-entropy"}
DATA_FIELDS = ["task", "train_file", "text_col", "label_col", "lm_format", "prompt_col", "eval_percent", "eval_file",
               "ood_file", "max_examples"]


def missing_columns_note(names: list[str], text: str | None, label: str | None, task: str) -> str:
    """What the preview says when no column fits a role the task needs (never guessed from an id column)."""
    needed = {"text": (text, TEXT_NAMES)} if task != TOKEN_CLASSIFICATION else {}
    if task == TEXT_CLASSIFICATION:
        needed["label"] = (label, LABEL_NAMES)
    missing = {role: wanted for role, (column, wanted) in needed.items() if column is None}
    if not missing or not names:
        return ""
    expected = "; ".join(f"a {role} column is named like {', '.join(wanted[:4])}" for role, wanted in missing.items())
    return (f"⚠️ No {' or '.join(missing)} column found ({expected}). This file's columns: "
            f"{', '.join(names)}. Pick the {' and '.join(missing)} column{'s' if len(missing) > 1 else ''} above.")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "…"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def progress_html(job: Job | None, snap: ProgressSnapshot | None) -> str:
    if job is None:
        return "<div class='ft-status'>No run yet: load data, check it, then press <b>Train</b>.</div>"
    pct = 100 * (1.0 if job.state == DONE else snap.fraction)
    state = {DONE: "finished", FAILED: "failed"}.get(job.state, snap.phase)
    detail = f"step {snap.step}/{snap.total_steps} · elapsed {_duration(snap.elapsed)}" if snap.total_steps else ""
    if detail and job.active:
        detail += f" · ETA {_duration(snap.eta_seconds)}"
    error = f"<div style='color:#b91c1c'><b>Error:</b> {html.escape(job.error)}</div>" if job.error else ""
    return (f"<div class='ft-status'><b>{html.escape(job.description)}</b>: {html.escape(state)} {detail}"
            f"<div style='background:#e5e7eb;border-radius:6px;height:14px;margin-top:6px'>"
            f"<div style='width:{pct:.1f}%;background:#6366f1;height:14px;border-radius:6px'></div></div>{error}</div>")


def loss_figure(snap: ProgressSnapshot | None) -> go.Figure:
    fig = go.Figure()
    if snap is not None:
        for name, points in (("train loss", snap.train_loss), ("eval loss", snap.eval_loss)):
            if points:
                steps, values = zip(*points)
                fig.add_scatter(x=steps, y=values, mode="lines+markers", name=name)
        for term in dict.fromkeys(t for _, t, _ in snap.loss_terms):  # distillation: KL to the teacher, CE to labels
            steps, values = zip(*[(step, v) for step, t, v in snap.loss_terms if t == term])
            fig.add_scatter(x=steps, y=values, mode="lines", name=TERM_NAMES.get(term, term), line=dict(width=1))
        if snap.eval_metrics:  # the metric that picks the best weights (e.g. macro F1), on its own axis
            steps, names, values = zip(*snap.eval_metrics)
            fig.add_scatter(x=steps, y=values, mode="lines+markers", name=f"eval {names[0]}", yaxis="y2",
                            line=dict(dash="dot"))
            fig.update_layout(yaxis2=dict(title=names[0], overlaying="y", side="right", range=[0, 1.05]))
    fig.update_layout(title="Loss", xaxis_title="step", yaxis_title="loss", height=320, margin=dict(l=40, r=40, t=40, b=40),
                      legend=dict(orientation="h", y=1.12, x=1, xanchor="right"))
    return fig


def confusion_figure(metrics: ClassificationMetrics) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=metrics.confusion, x=metrics.labels, y=metrics.labels, colorscale="Blues",
                               text=metrics.confusion, texttemplate="%{text}", showscale=False))
    fig.update_layout(title="Confusion matrix (validation)", xaxis_title="predicted", yaxis_title="true",
                      yaxis_autorange="reversed", height=340, margin=dict(l=60, r=10, t=40, b=50))
    return fig


def metrics_lines(metrics: Metrics) -> str:
    if isinstance(metrics, ClassificationMetrics):
        return (f"accuracy **{metrics.accuracy:.3f}** · macro precision {metrics.precision:.3f} · "
                f"macro recall {metrics.recall:.3f} · macro F1 **{metrics.f1:.3f}**")
    if isinstance(metrics, EntityMetrics):
        return (f"entity F1 **{metrics.f1:.3f}** · precision {metrics.precision:.3f} · recall {metrics.recall:.3f} · "
                f"token accuracy {metrics.token_accuracy:.3f}")
    return (f"perplexity **{metrics.before:.2f} → {metrics.after:.2f}** "
            f"({'lower is better' if metrics.after <= metrics.before else 'it went up: try a lower learning rate'}; "
            f"{metrics.tokens:,} tokens)")


def result_markdown(result: FineTuneResult) -> str:
    how = (result.stopped if result.stopped else "stopped early (no improvement)" if result.early_stopped
           else "completed")
    kept = f"the best weights (step {result.best_step})" if result.best_step else "the final weights"
    lines = [f"### Results: {result.card.name}",
             f"Training {how} after {result.steps} steps in {_duration(result.train_seconds)}; kept {kept}. "
             f"Trainable parameters: **{result.trainable_params:,}** of {result.total_params:,} "
             f"({100 * result.trainable_params / max(1, result.total_params):.2f}%).",
             f"- **Validation:** {metrics_lines(result.metrics)}"]
    if result.extra_metrics is not None:
        lines.append(f"- **Out-of-domain:** {metrics_lines(result.extra_metrics)}")
    lines += [f"- {note}" for note in result.notes]
    if len(result.table) > 1:  # a comparison: teacher vs student, or this run vs its plain twin
        lines.append("\n" + facts_table(result.table))
    elif result.table:
        facts = result.table[0]
        lines.append(f"- **Size and speed:** {facts.params:,} parameters, {facts.size_mb:.1f} MB of weights, "
                     f"{facts.speed:,.0f} {facts.speed_unit} on the validation texts (this machine).")
    lines.append(f"\nSaved to `{result.folder}`; pick it as **★ {result.card.name}** in the other tabs' model lists.")
    return "\n".join(lines)


def facts_table(rows) -> str:
    """Teacher vs student, or this run vs its plain twin, as a markdown table (two rows or more)."""
    speedup = rows[-1].speed / rows[0].speed if rows[0].speed else 0
    out = ["| model | parameters | trained | weights (MB) | speed | " + rows[0].score_name + " | training time |",
           "|---|---|---|---|---|---|---|"]
    for f in rows:
        trained = f"{f.trained_params:,}" if f.trained_params else "–"
        seconds = "–" if f.train_seconds is None else _duration(f.train_seconds)
        out.append(f"| {html.escape(f.name)} | {f.params:,} | {trained} | {f.size_mb:.1f} | {f.speed:,.0f} "
                   f"{f.speed_unit} | {f.score:.3f} | {seconds} |")
    return "\n".join(out) + f"\n\nSpeed ratio (last row / first row, this machine): **{speedup:.2f}x**."


def report_table(result: FineTuneResult) -> pd.DataFrame:
    if isinstance(result.metrics, PerplexityMetrics):
        return pd.DataFrame()
    return result.metrics.report.round(3)


@dataclass
class FinetuneHandlers:
    """Event handlers: turn component values into core calls and core results into component updates."""

    services: Services
    jobs: JobRegistry

    def task_changed(self, task: str):
        hyper = default_hyperparameters(task)
        choices = self.services.model_choices(*BASES[task])
        lm, cls = task == CAUSAL_LM, task == TEXT_CLASSIFICATION
        return (gr.update(choices=choices, value=DEFAULT_BASE[task]),
                gr.update(visible=task != TOKEN_CLASSIFICATION, label="Text / response column" if lm else "Text column"),
                gr.update(visible=cls), gr.update(visible=lm),
                gr.update(info="stratified by class" if cls else "random rows (sentences for NER)"),
                *[getattr(hyper, name) for name in HYPERPARAMETER_FIELDS])

    @staticmethod
    def distil_changed(distil: bool, task: str, model: str):
        """The base model is the teacher when distilling: a trained classifier, not the bare encoder."""
        value = OFFLINE_CLASSIFIER if distil and task == TEXT_CLASSIFICATION and model == OFFLINE_ENCODER else model
        return gr.update(label="Teacher model" if distil else "Base model", value=value)

    @staticmethod
    def file_changed(path: str | None, task: str = TEXT_CLASSIFICATION):
        """Outputs: preview, text, label and prompt columns (guessed from the names), format, a note."""
        empty = (gr.update(value=None), *(gr.update(choices=[], value=None),) * 3, gr.skip())
        if not path:
            return *empty, ""
        try:
            table, names = preview(path), columns(path)
        except PlaygroundError as err:
            return *empty, f"⚠️ {err}"
        table = table.map(lambda v: v[:45] + "…" if isinstance(v, str) and len(v) > 45 else v)  # room for every column
        guess = guess_columns(names)
        return (table, gr.update(choices=names, value=guess.text), gr.update(choices=names, value=guess.label),
                gr.update(choices=names, value=guess.prompt), PAIRS if guess.prompt else PLAIN,
                missing_columns_note(names, guess.text, guess.label, task))

    @staticmethod
    def example(task: str):
        """Outputs: the example file, and how many of its examples the quick example run uses."""
        return str(assets_dir() / EXAMPLES[task]), EXAMPLE_SAMPLE[task]

    @staticmethod
    def _data(form: dict) -> DataRequest:
        """The data part of the form; the prompt column counts only for prompt/response causal LM data."""
        pairs = form["task"] == CAUSAL_LM and form["lm_format"] == PAIRS
        return DataRequest(form["task"], form["train_file"], form["text_col"], form["label_col"],
                           form["prompt_col"] if pairs else None, form["eval_percent"], form["eval_file"],
                           form["ood_file"], form.get("max_examples") or 0)

    def check(self, seed, **form) -> str:
        try:
            data = self._data(form).prepare(Hyperparameters.from_form({"seed": seed}).seed)
        except PlaygroundError as err:
            return f"⚠️ {err}"
        return f"✅ Ready: {data.summary()}"

    def train(self, user_id, base_model, name, **form):
        user_id = user_id or uuid.uuid4().hex
        try:
            hyper = Hyperparameters.from_form(form)
            data = self._data(form).prepare(hyper.seed)
            limit = self.services.settings.max_train_examples
            if len(data.train) > limit:
                raise InputError(f"This server trains on at most {limit:,} examples per run; your data has "
                                 f"{len(data.train):,}. Use a smaller file.")
            base_path = self.services.manager.resolve(base_model).path  # an unknown model fails now, with a message
            spec = FineTuneSpec(form["task"], base_model, data, hyper, name or "")
            what = f"{dict((v, k) for k, v in TASK_CHOICES)[spec.task]} on {base_model}"
            job = self.jobs.submit(user_id, what, train_job, spec, base_path, str(self.services.store.root))
        except PlaygroundError as err:
            return user_id, f"⚠️ {err}"
        return user_id, f"Started: {job.description}. You can leave this tab or reload the page; the run continues."

    def stop(self, user_id) -> str:
        if self.jobs.stop(user_id or ""):
            return "Stopping at the next step; the best weights so far are kept and saved."
        return "No run in progress."

    def restore(self, user_id):
        """On page load: this browser's run as it stands (running, finished or none), drawn at once."""
        return self.poll(user_id, None, None)

    def poll(self, user_id, shown_version, shown_state):
        """Redraw only what changed since the last tick (most ticks change nothing)."""
        job = self.jobs.get(user_id or "")
        snap = job.progress.snapshot() if job else None
        version, state = (snap.version if snap else -1), (job.state if job else "")
        if version == shown_version and state == shown_state:
            return (gr.skip(),) * 8
        status, curves = progress_html(job, snap), loss_figure(snap)
        if job is None or job.state != DONE:
            return status, curves, gr.skip(), gr.skip(), gr.skip(), gr.skip(), version, state
        result: FineTuneResult = job.result
        confusion = (gr.update(value=confusion_figure(result.metrics), visible=True)
                     if isinstance(result.metrics, ClassificationMetrics) else gr.update(visible=False))
        picker = gr.update(choices=self.services.model_choices(*BASES[result.spec.task]))
        report = report_table(result)
        return (status, curves, result_markdown(result), gr.update(value=report, visible=not report.empty), confusion,
                picker, version, state)

    def _result_folder(self, user_id):
        job = self.jobs.get(user_id or "")
        if job is None or job.state != DONE:
            raise gr.Error("Train a model first: there is no finished run to share.")
        return job.result.folder

    def download(self, user_id) -> str:
        return str(zip_model(self._result_folder(user_id)))

    def push(self, user_id, repo_id, token, private) -> str:
        try:
            if not self.services.settings.allow_hub_push:
                raise InputError("Pushing to the Hub is turned off on this server (the operator can allow it with "
                                 "--allow-hub-push). Download the zip instead.")
            return f"✅ Pushed to {push_to_hub(self._result_folder(user_id), repo_id, token, private)}"
        except PlaygroundError as err:
            return f"⚠️ {err}"


def build_tab(shell) -> dict[str, gr.Component]:
    services: Services = shell.services
    h = FinetuneHandlers(services, JobRegistry(services.work))
    c: dict[str, gr.Component] = {}
    gr.Markdown("Train a model on your own data. Training runs in the background: you can switch tabs or reload "
                "the page. The result is saved to the local model store and offered in every tab's model list.")
    with gr.Row():
        c["task"] = gr.Radio(TASK_CHOICES, value=TEXT_CLASSIFICATION, label="Task", scale=2)
        c["model"] = model_picker(services, *BASES[TEXT_CLASSIFICATION], label="Base model", value=OFFLINE_ENCODER)
    with gr.Row():
        with gr.Column():
            c["train_file"] = gr.File(label=f"Training data (CSV, TSV, JSONL, TXT; CoNLL 'token TAG' for NER; up to {MAX_UPLOAD_BYTES // 2**20} MiB)",
                                      file_types=[".csv", ".tsv", ".jsonl", ".json", ".txt", ".conll"], type="filepath")
            c["example"] = gr.Button("Load the example data for this task", size="sm")
            c["preview"] = gr.Dataframe(label="Preview", interactive=False, max_height=260)
        with gr.Column():
            with gr.Row():
                c["text_col"] = gr.Dropdown(label="Text column", allow_custom_value=True)
                c["label_col"] = gr.Dropdown(label="Label column", allow_custom_value=True)
            with gr.Row(visible=False) as lm_row:
                c["lm_format"] = gr.Radio([PLAIN, PAIRS], value=PAIRS, label="Format")
                c["prompt_col"] = gr.Dropdown(label="Prompt column", allow_custom_value=True)
            with gr.Row():
                c["eval_percent"] = gr.Slider(2, 50, value=10, step=1, label="Validation split (%)",
                                              info="stratified by class")
                c["max_examples"] = gr.Number(0, precision=0, minimum=0, label="Examples to use (0 = all)",
                                              info="a random sample of the file, for a quick run; the example "
                                                   "loads with a sample, 0 trains on all of it")
            with gr.Row():
                c["eval_file"] = gr.File(label="Validation file (optional, replaces the split)", type="filepath")
                c["ood_file"] = gr.File(label="Out-of-domain evaluation file (optional)", type="filepath")
            c["check"] = gr.Button("Check data")
            c["data_msg"] = gr.Markdown()
    hyper = default_hyperparameters(TEXT_CLASSIFICATION)
    with gr.Accordion("Hyperparameters", open=False):
        with gr.Row():
            c["learning_rate"] = gr.Number(hyper.learning_rate, label="Learning rate")
            c["epochs"] = gr.Number(hyper.epochs, label="Epochs")
            c["batch_size"] = gr.Number(hyper.batch_size, label="Batch size", precision=0)
            c["max_length"] = gr.Number(hyper.max_length, label="Max length (tokens)", precision=0)
            c["weight_decay"] = gr.Number(hyper.weight_decay, label="Weight decay")
        with gr.Row():
            c["warmup"] = gr.Number(hyper.warmup, label="Warmup (share of steps)")
            c["seed"] = gr.Number(hyper.seed, label="Seed", precision=0)
            c["patience"] = gr.Number(hyper.patience, label="Early-stopping patience (evals; 0 = off)", precision=0)
            c["evals_per_epoch"] = gr.Number(hyper.evals_per_epoch, label="Evaluations per epoch", precision=0)
        with gr.Row():
            c["lora"] = gr.Checkbox(hyper.lora, label="LoRA (train a small adapter instead of every weight)")
            c["lora_r"] = gr.Number(hyper.lora_r, label="LoRA r", precision=0)
            c["lora_alpha"] = gr.Number(hyper.lora_alpha, label="LoRA alpha", precision=0)
            c["lora_dropout"] = gr.Number(hyper.lora_dropout, label="LoRA dropout")
            c["lora_targets"] = gr.Textbox(hyper.lora_targets, label="LoRA target modules",
                                           placeholder="default for the architecture, e.g. q_proj,v_proj")
    with gr.Accordion("Distil a smaller model · mitigate bias · custom head", open=False):
        gr.Markdown("**Distil**: the base model becomes the *teacher*; a student keeping fewer of its layers learns "
                    "from its softened outputs and the labels. **Mitigate** (classification): add gender-, race-, "
                    "religion-, nationality-, age- and disability-swapped copies of the training texts, or reweigh "
                    "by a `group` column. **Head** (classification): how the text becomes one vector. "
                    "**Compare** trains the plain twin (standard head, no mitigation) on the same data and seed.")
        with gr.Row():
            c["distil"] = gr.Checkbox(hyper.distil, label="Distil into a smaller student")
            c["student_layers"] = gr.Number(hyper.student_layers, label="Student layers (0 = half)", precision=0)
            c["distil_alpha"] = gr.Slider(0, 1, value=hyper.distil_alpha, step=0.05,
                                          label="Weight of the teacher (KL); labels get the rest")
            c["distil_temperature"] = gr.Number(hyper.distil_temperature, label="Temperature")
        with gr.Row():
            c["augment"] = gr.Checkbox(hyper.augment, label="Counterfactual augmentation")
            c["reweigh"] = gr.Checkbox(hyper.reweigh, label="Reweigh by the 'group' column")
            c["head"] = gr.Dropdown(list(HEADS), value=hyper.head, label="Classification head")
            c["freeze_encoder"] = gr.Checkbox(hyper.freeze_encoder, label="Freeze the encoder (train the head only)")
            c["compare"] = gr.Checkbox(hyper.compare, label="Compare with the plain twin")
    with gr.Row():
        c["name"] = gr.Textbox(label="Save as", placeholder="name in the model store (default: base model + task)")
        c["train"] = gr.Button("Train", variant="primary")
        c["stop"] = gr.Button("Stop", variant="stop")
    c["message"] = gr.Markdown()
    c["status"] = gr.HTML(elem_id="finetune-status")  # filled on page load: a reload finds its run at once
    c["curves"] = gr.Plot(label="Loss curves")
    c["results"] = gr.Markdown()
    with gr.Row():
        c["report"] = gr.Dataframe(label="Per-class / per-entity report (validation)", interactive=False, visible=False)
        c["confusion"] = gr.Plot(label="Confusion matrix", visible=False)
    with gr.Accordion("Download or share the trained model", open=False):
        with gr.Row():
            c["zip"] = gr.Button("Download as zip")
            c["zip_file"] = gr.File(label="Model zip", interactive=False)
        with gr.Row(visible=services.settings.allow_hub_push):
            c["repo"] = gr.Textbox(label="Hub repository", placeholder="your-name/my-model")
            c["token"] = gr.Textbox(label="Hugging Face token (write access; used once, never stored)", type="password")
            c["private"] = gr.Checkbox(True, label="Private")
            c["push"] = gr.Button("Push to the Hub")
        c["push_msg"] = gr.Markdown()
    c["user"] = gr.BrowserState("", storage_key="llmpg_finetune_user", render=False)  # read on page load
    shell.page_level.append(c["user"])
    shown_version, shown_state = gr.State(-1), gr.State("")
    c["timer"] = gr.Timer(1.0)

    hyper_inputs = [c[f] for f in HYPERPARAMETER_FIELDS]
    data_inputs = {name: c[name] for name in DATA_FIELDS}
    c["task"].change(h.task_changed, c["task"], [c["model"], c["text_col"], c["label_col"], lm_row, c["eval_percent"],
                                                 *hyper_inputs], api_name="finetune_task")
    c["train_file"].change(h.file_changed, [c["train_file"], c["task"]],
                           [c["preview"], c["text_col"], c["label_col"], c["prompt_col"], c["lm_format"],
                            c["data_msg"]],
                           api_name="finetune_preview")
    c["example"].click(h.example, c["task"], [c["train_file"], c["max_examples"]], api_name="finetune_example")
    c["train_file"].upload(lambda: 0, None, c["max_examples"], api_visibility="private")  # your own file: all of it
    c["check"].click(h.check, inputs_kwargs={"seed": c["seed"], **data_inputs}, outputs=c["data_msg"],
                     api_name="finetune_check")
    c["train"].click(h.train, inputs_kwargs={"user_id": c["user"], "base_model": c["model"], "name": c["name"],
                                             **data_inputs, **{f: c[f] for f in HYPERPARAMETER_FIELDS}},
                     outputs=[c["user"], c["message"]], api_name="finetune_train")
    c["distil"].change(h.distil_changed, [c["distil"], c["task"], c["model"]], c["model"], api_visibility="private")
    c["stop"].click(h.stop, c["user"], c["message"], api_name="finetune_stop")
    run_outputs = [c["status"], c["curves"], c["results"], c["report"], c["confusion"], c["model"], shown_version,
                   shown_state]
    c["timer"].tick(h.poll, [c["user"], shown_version, shown_state], run_outputs, api_name="finetune_poll",
                    show_progress="hidden")
    shell.demo.load(h.restore, c["user"], run_outputs, api_visibility="private", show_progress="hidden")
    c["zip"].click(h.download, c["user"], c["zip_file"], api_name="finetune_zip")
    c["push"].click(h.push, [c["user"], c["repo"], c["token"], c["private"]], c["push_msg"], api_name="finetune_push")
    return c
