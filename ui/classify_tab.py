"""Classify & NER tab: label a text (a trained classifier or zero-shot labels), a CSV/TXT batch, or highlight entities."""
from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr
import pandas as pd

from core.classify.batch import LIMITS, classify_batch, read_batch, save_results, texts_from
from core.classify.classifier import SequenceClassifier, classify_text, probability_figure
from core.classify.ner import ner_model
from core.classify.ood import AUTO, DEFAULT_THRESHOLD, EXPLANATION, METHODS, OodStats
from core.classify.zero_shot import DEFAULT_TEMPLATE, parse_labels, zero_shot_classifier
from core.common.errors import PlaygroundError, check_number
from core.common.stopping import RunControl
from core.common.uploads import UploadError
from core.models.device import on_gpu
from core.models.paths import assets_dir
from core.models.registry import ENCODER, OFFLINE_ENCODER, TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION, ZERO_SHOT
from ui.components import HEAVY, STOP, failure_message, model_picker, progress_callback, refresh_picker, stop_run

CLASSIFIER, ZERO_SHOT_MODE = "Trained classifier", "Zero-shot (your labels)"
ZERO_SHOT_NOTE = ("Zero-shot: an **NLI model** (e.g. BART MNLI) scores how well “This text is about *label*.” follows "
                  "from your text; a **sentence encoder** (the offline MiniLM) compares their embeddings instead.")
NER_NOTE = ("Whole entities are shown (sub-word pieces are merged). The offline default is spaCy's pretrained "
            "`en_core_web_sm` (PERSON, ORG, GPE, DATE, ...; it gives no per-entity score). Hub presets and token "
            "classifiers saved by Fine-tune give CoNLL types (PER, ORG, LOC, MISC) with scores.")
TEXT_EXAMPLES = [
    [CLASSIFIER, "An absolute delight: the cast is wonderful and the ending moved me to tears.", ""],
    [CLASSIFIER, "Two hours of my life I will never get back. The plot makes no sense.", ""],
    [CLASSIFIER, "The quarterly report is due on Friday.", ""],
    [ZERO_SHOT_MODE, "The striker scored twice in the final ten minutes to win the cup.", "sports, politics, science, business"],
    [ZERO_SHOT_MODE, "The central bank raised interest rates to fight inflation.", "sports, politics, science, business"],
]


class ClassifyHandlers:
    """Event handlers: widget values in, core calls, core results out as components."""

    def __init__(self, services):
        self.services = services

    def _classifier(self, mode, classifier_id, zero_shot_id, labels, template, progress):
        report = progress_callback(progress)
        if mode == ZERO_SHOT_MODE:
            return zero_shot_classifier(self.services.manager, zero_shot_id, parse_labels(labels), template, report)
        loaded = self.services.manager.load(classifier_id, task=TEXT_CLASSIFICATION, progress=report)
        return SequenceClassifier(loaded.model, loaded.tokenizer, OodStats.load(loaded.path))

    @staticmethod
    def mode_change(mode):
        zero = mode == ZERO_SHOT_MODE
        return gr.update(visible=not zero), gr.update(visible=zero)

    @on_gpu  # a ZeroGPU Space lends a GPU for the call; elsewhere a no-op
    def classify(self, mode, classifier_id, zero_shot_id, labels, template, text, threshold, ood_method,
                 progress=gr.Progress()):
        try:
            threshold = check_number("Confidence threshold", threshold, 0, 1)
            classifier = self._classifier(mode, classifier_id, zero_shot_id, labels, template, progress)
            result = classify_text(classifier, text, threshold, ood_method or AUTO)
        except PlaygroundError as err:
            return failure_message(err), None
        if result.notice:
            gr.Warning(result.notice)
        method = getattr(classifier, "method", "classifier")
        lines = [f"## {result.label}  ·  {result.probs.top(0)[1]:.1%}", result.confidence.describe(),
                 f"<small>method: {method}</small>"]
        if result.notice:
            lines.append(f"ℹ️ {result.notice}")
        return "\n\n".join(lines), probability_figure(result)

    @staticmethod
    def upload(path):
        """Fill the column choice from the uploaded file (TXT files have the single column 'text')."""
        if not path:
            return gr.update(choices=[], value=None), ""
        try:
            batch = read_batch(path)
        except UploadError as err:
            return gr.update(choices=[], value=None), failure_message(err)
        return (gr.update(choices=batch.columns, value=batch.suggested_column),
                f"{len(batch.frame):,} rows, columns: {', '.join(batch.columns)}")

    @on_gpu
    def batch(self, control: RunControl, mode, classifier_id, zero_shot_id, labels, template, path, column, threshold,
              ood_method, progress=gr.Progress()):
        try:
            threshold = check_number("Confidence threshold", threshold, 0, 1)
            if not path:
                raise UploadError("Upload a CSV or TXT file first.")
            texts, skipped = texts_from(read_batch(path).frame, column)
            with self.services.work.run(control, "batch labelling", progress_callback(progress)) as stop:
                classifier = self._classifier(mode, classifier_id, zero_shot_id, labels, template, progress)
                result = classify_batch(classifier, texts, threshold, progress_callback(progress), stop, skipped,
                                        ood_method or AUTO)
        except PlaygroundError as err:
            return failure_message(err), None, None
        out = save_results(result.table, Path(tempfile.mkdtemp(prefix="llmpg-classify-")))
        return result.summary(), result.table, str(out)

    @staticmethod
    def stop(control: RunControl) -> str:
        return stop_run(control, "chunk")

    @on_gpu
    def ner(self, model_id, text, progress=gr.Progress()):
        try:
            result = ner_model(self.services.manager, model_id, progress_callback(progress))(text)
        except PlaygroundError as err:
            return failure_message(err), None, None
        if result.notice:
            gr.Warning(result.notice)
        table = pd.DataFrame([{"entity": e.text, "type": e.label, "start": e.start, "end": e.end,
                               "score": None if e.score is None else round(e.score, 3)} for e in result.entities],
                             columns=["entity", "type", "start", "end", "score"])
        kinds = ", ".join(result.entity_types) or "none"
        status = f"{len(result.entities)} entities · types: {kinds}" + (f"\n\nℹ️ {result.notice}" if result.notice else "")
        return status, result.spans(), table


def build_tab(shell) -> dict[str, gr.Component]:
    services = shell.services
    handlers = ClassifyHandlers(services)
    gr.Markdown("Label text with a sentiment/topic classifier or with labels you type (zero-shot), one text or a whole "
                "file, and highlight the people, places and organisations it mentions.")
    with gr.Tabs():
        with gr.Tab("Classify", id="classify_text_view"):
            mode = gr.Radio([CLASSIFIER, ZERO_SHOT_MODE], value=CLASSIFIER, label="Method")
            with gr.Row():
                with gr.Column(visible=True) as classifier_box:
                    classifier = model_picker(services, TEXT_CLASSIFICATION, label="Classifier")
                with gr.Column(visible=False) as zero_box:
                    zero_model = model_picker(services, ZERO_SHOT, ENCODER, label="Zero-shot model",
                                              value=OFFLINE_ENCODER)
                    labels = gr.Textbox(label="Candidate labels (comma-separated)", value="sports, politics, science, business")
                    template = gr.Textbox(label="Hypothesis template", value=DEFAULT_TEMPLATE,
                                          info="'{}' is replaced by each label")
                    gr.Markdown(ZERO_SHOT_NOTE)
                refresh = gr.Button("↻ Refresh models", scale=0)
            text = gr.Textbox(label="Text", lines=3, placeholder="Type or paste a text to label")
            with gr.Row():
                ood_method = gr.Dropdown([("auto: the best-measured method for this classifier", AUTO),
                                          *[(m, m) for m in METHODS]], value=AUTO, label="Out-of-distribution flag",
                                         info=EXPLANATION)
                threshold = gr.Slider(0.0, 1.0, value=DEFAULT_THRESHOLD, step=0.01, label="Max-softmax threshold",
                                      info="Below this top probability the max-softmax method flags a text")
            run = gr.Button("Classify", variant="primary")
            gr.Examples(TEXT_EXAMPLES, inputs=[mode, text, labels], label="Examples (click to load)")
            with gr.Row():
                verdict = gr.Markdown()
                chart = gr.Plot(label="Class probabilities")
            with gr.Accordion("Batch: label a CSV or TXT file", open=False):
                gr.Markdown(f"Uses the method and model chosen above. {LIMITS}")
                with gr.Row():
                    upload = gr.File(label="CSV or TXT file", file_types=[".csv", ".txt"], type="filepath")
                    with gr.Column():
                        column = gr.Dropdown(label="Text column", choices=[], allow_custom_value=True,
                                             info="Filled in after upload; pick or type a column name")
                        upload_info = gr.Markdown()
                gr.Examples([[str(assets_dir() / "classify_examples.csv")], [str(assets_dir() / "classify_examples.txt")]],
                            inputs=[upload], label="Example files (click to load)")
                with gr.Row():
                    batch_run = gr.Button("Label the file", variant="primary")
                    batch_stop = gr.Button("Stop", variant="stop", scale=0)
                batch_status = gr.Markdown()
                batch_table = gr.Dataframe(label="Results", wrap=True, max_height=400)
                download = gr.File(label="Download results (CSV)")
        with gr.Tab("Named entities", id="classify_ner_view"):
            gr.Markdown(NER_NOTE)
            with gr.Row():
                ner_model_picker = model_picker(services, TOKEN_CLASSIFICATION, label="NER model")
                ner_refresh = gr.Button("↻ Refresh models", scale=0)
            ner_text = gr.Textbox(label="Text", lines=4, placeholder="Type or paste a text with names in it")
            ner_run = gr.Button("Find entities", variant="primary")
            ner_examples = [[line] for line in (assets_dir() / "ner_examples.txt").read_text().splitlines() if line]
            gr.Examples(ner_examples, inputs=[ner_text], label="Examples (click to load)")
            ner_status = gr.Markdown()
            highlighted = gr.HighlightedText(label="Entities", show_legend=True, combine_adjacent=False)
            entity_table = gr.Dataframe(label="Entities with scores", headers=["entity", "type", "start", "end", "score"],
                                        wrap=True)

    control = gr.State(RunControl())
    choice_inputs = [mode, classifier, zero_model, labels, template]
    mode.change(handlers.mode_change, mode, [classifier_box, zero_box], api_name="classify_mode")
    refresh.click(refresh_picker(services, TEXT_CLASSIFICATION), None, classifier, api_name="classify_refresh")
    refresh.click(refresh_picker(services, ZERO_SHOT, ENCODER), None, zero_model, api_name="classify_refresh_zero_shot")
    run.click(handlers.classify, choice_inputs + [text, threshold, ood_method], [verdict, chart], api_name="classify_text")
    text.submit(handlers.classify, choice_inputs + [text, threshold, ood_method], [verdict, chart],
                api_name="classify_text_submit")
    upload.change(handlers.upload, upload, [column, upload_info], api_name="classify_upload")
    batch_run.click(handlers.batch, [control, *choice_inputs, upload, column, threshold, ood_method],
                    [batch_status, batch_table, download], api_name="classify_batch", **HEAVY)
    batch_stop.click(handlers.stop, control, batch_status, api_name="classify_batch_stop", **STOP)
    ner_refresh.click(refresh_picker(services, TOKEN_CLASSIFICATION), None, ner_model_picker, api_name="classify_ner_refresh")
    ner_run.click(handlers.ner, [ner_model_picker, ner_text], [ner_status, highlighted, entity_table], api_name="classify_ner")
    return {"mode": mode, "classifier": classifier, "zero_shot_model": zero_model, "labels": labels, "text": text,
            "threshold": threshold, "verdict": verdict, "chart": chart, "upload": upload, "column": column,
            "batch_table": batch_table, "download": download, "ner_model": ner_model_picker, "ner_text": ner_text,
            "highlighted": highlighted, "entity_table": entity_table}
