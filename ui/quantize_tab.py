"""Quantize tab: measure compressed variants of one model side by side, then try one in the Chat tab."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from core.common.errors import PlaygroundError
from core.common.stopping import RunControl
from core.common.uploads import UploadError, read_text_file
from core.models.device import on_gpu
from core.models.manager import Fp32Figures
from core.models.paths import assets_dir
from core.models.registry import CAUSAL_LM, TEXT_CLASSIFICATION, find_preset
from core.quantize.metrics import (
    Comparison,
    EvalSettings,
    compare_variants,
    read_labelled_csv,
    size_quality_figure,
    speed_figure,
)
from core.quantize.variants import VARIANTS, CompressionOptions, calibrated, register_variant, variant_id
from ui.components import HEAVY, STOP, model_picker, progress_callback, stop_run

BUILT_IN, UPLOADED = "Built-in sample (assets/eval_text.txt)", "Uploaded text file"
OWN_CALIBRATION, UPLOADED_CALIBRATION = "The team's text (assets/calibration_text.txt)", "Uploaded text file"
TASKS = {"Language model": CAUSAL_LM, "Classifier": TEXT_CLASSIFICATION}
# The few that teach the most, in under 2 minutes on 2 CPU cores (bench/quantize_default.py): 8-bit weights alone, 8-bit
# activations too, 4 bits, and pruning that reads activations. Every other variant is one click away.
DEFAULT_VARIANTS = ["fp32", "int8-weight", "int8-dynamic", "onnx-int4", "wanda"]


@dataclass(frozen=True)
class MeasuredRun:
    """The user's last comparison, kept so a variant loaded from it into Chat carries the figures measured here."""

    model_id: str
    task: str
    options: CompressionOptions
    comparison: Comparison
    text: str  # the evaluation text's name

    def figures(self, model_id: str, task: str, options: CompressionOptions, variant: str) -> Fp32Figures | None:
        """The variant's figures, if this comparison measured the very build about to be loaded."""
        if (model_id, task, options) != (self.model_id, self.task, self.options):
            return None
        return self.comparison.against_fp32(variant, self.text)


class QuantizeHandlers:
    """Event handlers: turn widget values into core calls and core results into components."""

    def __init__(self, shell):
        self.services = shell.services
        self.device = shell.services.manager.device.kind
        # The chat tab is built first; alone (LLMPG_TABS=quantize) there is no chat picker to update.
        self.chat_model = shell.components.get("chat", {}).get("model")

    @staticmethod
    def kind_for(model_id: str):
        """Presets know their task; for a typed id or folder the user's choice stays."""
        preset = find_preset(model_id or "")
        if preset is None or preset.task not in TASKS.values():
            return gr.update()
        return gr.update(value=next(k for k, t in TASKS.items() if t == preset.task))

    def _evaluation(self, task: str, source: str, text_file, labels_csv):
        if task == CAUSAL_LM:
            if source == UPLOADED:
                if not text_file:
                    raise UploadError("Upload a .txt file, or choose the built-in sample.")
                return read_text_file(text_file)
            return (assets_dir() / "eval_text.txt").read_text(encoding="utf-8")
        if not labels_csv:
            raise UploadError("A classifier is measured on labelled data: upload a CSV with text,label columns.")
        return read_labelled_csv(labels_csv)

    @on_gpu  # a ZeroGPU Space lends a GPU for the call; elsewhere a no-op
    @staticmethod
    def _options(sparsity, cut, calibration, calibration_file, tokenizer) -> CompressionOptions:
        options = CompressionOptions(sparsity, cut)
        if calibration == UPLOADED_CALIBRATION:
            if not calibration_file:
                raise UploadError("Upload a .txt calibration file, or use the team's text.")
            return calibrated(options, tokenizer, read_text_file(calibration_file), Path(calibration_file).name)
        return calibrated(options, tokenizer)

    def run(self, control: RunControl, model_id, kind, variants, sparsity, cut, calibration, calibration_file, source,
            text_file, labels_csv, max_tokens, decode_tokens, progress=gr.Progress()):
        task = TASKS[kind]
        try:
            CompressionOptions(sparsity, cut)  # numbers checked before anything loads
            settings = EvalSettings(max_eval_tokens=max_tokens, decode_tokens=decode_tokens)
            evaluation = self._evaluation(task, source, text_file, labels_csv)
            evaluated = Path(text_file).name if source == UPLOADED and text_file else "assets/eval_text.txt"
            with self.services.work.run(control, "quantization sweep", progress_callback(progress)) as stop:
                base = self.services.manager.load(model_id, task, precision="fp32", progress=progress_callback(progress))
                options = self._options(sparsity, cut, calibration, calibration_file, base.tokenizer)
                runs = compare_variants(base.model_id, task, base.model, base.tokenizer, list(variants or []),
                                        evaluation, options, settings, self.device, progress_callback(progress), stop)
                comparison = None
                for comparison in runs:
                    measured = MeasuredRun(model_id, task, options, comparison, evaluated)
                    yield self._outputs(measured, f"Measured {len(comparison.results)} of "
                                                  f"{len(set(variants or []) | {'fp32'})} variants…", final=False)
            if comparison is not None:
                done = f"Stopped ({stop.reason})." if stop.stopped else "Done."
                yield self._outputs(measured, f"{done} {self._summary(comparison)} Evaluated on {evaluated}; the "
                                              f"activation-aware rows calibrated on {options.calibration_name}.",
                                    final=True)
        except PlaygroundError as err:
            yield (gr.update(),) * 4 + (f"❌ {err}", gr.update(), gr.update())

    @staticmethod
    def _summary(comparison: Comparison) -> str:
        unit = "tokens" if comparison.task == CAUSAL_LM else "labelled texts"
        skipped = [r.variant for r in comparison.results if r.status != "ok"]
        return (f"{len(comparison.ok())} variants of **{comparison.model_id}** measured on {comparison.eval_tokens} {unit} "
                f"with {comparison.threads} threads." + (f" Not run here: {', '.join(skipped)} (see notes)." if skipped else ""))

    @staticmethod
    def _outputs(measured: MeasuredRun, status: str, final: bool):
        comparison = measured.comparison
        frame = comparison.frame().drop(columns=["description"])  # the checkbox labels already describe variants
        csv = gr.update()
        if final:
            path = Path(tempfile.mkdtemp(prefix="quantize_")) / "quantize_comparison.csv"
            frame.to_csv(path, index=False)
            csv = gr.update(value=str(path), visible=True)
        choices = [r.variant for r in comparison.ok()]
        return (frame, size_quality_figure(comparison), speed_figure(comparison), csv, status,
                gr.update(choices=choices, value=choices[-1] if choices else None), measured)

    def load_into_chat(self, model_id, kind, variant, sparsity, cut, calibration, calibration_file,
                       measured: MeasuredRun | None, progress=gr.Progress()):
        task = TASKS[kind]
        if not variant:
            gr.Warning("Run a comparison first, then pick one of its variants.")
            return gr.update(), gr.update(), gr.update()
        try:
            CompressionOptions(sparsity, cut)
            base = self.services.manager.load(model_id, task, precision="fp32", progress=progress_callback(progress))
            options = self._options(sparsity, cut, calibration, calibration_file, base.tokenizer)
            figures = measured.figures(model_id, task, options, variant) if measured else None
            loaded = register_variant(self.services.manager, base, variant, options, figures)
        except PlaygroundError as err:
            return f"❌ {err}", gr.update(), gr.update()
        if task != CAUSAL_LM:
            return f"Registered **{loaded.model_id}**: pick it in the Classify tab.", gr.update(), gr.update()
        if self.chat_model is None:
            return f"Registered **{loaded.model_id}** (the Chat tab is not part of this app).", gr.update(), gr.update()
        chat = gr.update(choices=self.services.model_choices(CAUSAL_LM), value=loaded.model_id)
        carried = ("with this comparison's agreement and perplexity against fp32" if figures else
                   "without figures against fp32: its settings differ from the last comparison's (compare again to "
                   "measure them)")
        first = variant_id(base.model_id, variant)  # also an earlier build no longer held: not always other options
        renamed = "" if loaded.model_id == first else f" {first} was an earlier build, so this one has a name of its own."
        return f"Loaded **{loaded.model_id}** into the Chat tab, {carried}.{renamed}", chat, gr.Tabs(selected="chat")


def build_tab(shell) -> dict[str, gr.Component]:
    handlers = QuantizeHandlers(shell)
    gr.Markdown("Compare compressed versions of one model in a single run: serialized size, conversion time, peak "
                "memory, prefill latency, decode speed, perplexity and agreement with fp32 (top-1 next token, KL "
                "divergence). Variants that cannot run on this machine are listed with the reason.")
    with gr.Row():
        with gr.Column(scale=2):
            model = model_picker(shell.services, CAUSAL_LM, TEXT_CLASSIFICATION)
            kind = gr.Radio(list(TASKS), value="Language model", label="Model type")
            variants = gr.CheckboxGroup([(f"{n}: {s.description}", n) for n, s in VARIANTS.items()],
                                        value=DEFAULT_VARIANTS, label="Variants (fp32 is always measured as the baseline)",
                                        info="The default few take about a minute and a half on 2 CPU cores; every "
                                             "variant takes several minutes (each +lora row about 2.5 more)")
            with gr.Row():
                every = gr.Button("Select every variant", size="sm")
                default = gr.Button("Back to the default few", size="sm")
        with gr.Column(scale=1):
            sparsity = gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="Pruning sparsity",
                                 info="Share of linear weights the pruning rows zero (2:4 is always 50 %)")
            cut = gr.Slider(0.05, 0.9, value=0.2, step=0.05, label="Low-rank: share of linear parameters to cut",
                            info="Ranks are chosen per layer from this one budget")
            calibration = gr.Radio([OWN_CALIBRATION, UPLOADED_CALIBRATION], value=OWN_CALIBRATION,
                                   label="Calibration text (Wanda, SVD-LLM)",
                                   info="Never the evaluation text: what calibrates is not what scores")
            calibration_file = gr.File(label="Calibration text (.txt)", file_types=[".txt"], type="filepath")
            source = gr.Radio([BUILT_IN, UPLOADED], value=BUILT_IN, label="Evaluation text (language models)")
            text_file = gr.File(label="Text file (.txt)", file_types=[".txt"], type="filepath")
            labels_csv = gr.File(label="Labelled CSV for classifiers (text,label)", file_types=[".csv"], type="filepath")
            with gr.Accordion("Measurement settings", open=False):
                max_tokens = gr.Slider(64, 4096, value=2048, step=64, label="Evaluation tokens (text is cut after)")
                decode_tokens = gr.Slider(4, 128, value=32, step=4, label="Decode tokens timed per run")
    control = gr.State(RunControl())
    with gr.Row():
        run = gr.Button("Compare variants", variant="primary")
        stop = gr.Button("Stop after this variant", variant="stop")
    status = gr.Markdown(elem_id="quantize-status")  # the run's progress shows here, never over the results
    table = gr.Dataframe(label="Results", interactive=False, wrap=True, elem_id="quantize-table")
    with gr.Row():
        size_plot = gr.Plot(label="Size vs quality", elem_id="quantize-size-plot")
        speed_plot = gr.Plot(label="Speed", elem_id="quantize-speed-plot")
    csv = gr.File(label="Results as CSV", visible=False)
    with gr.Row():
        variant = gr.Dropdown(label="Variant to try", choices=[], interactive=True)
        load = gr.Button("Load variant into Chat")
    load_status = gr.Markdown()
    measured = gr.State()  # the last comparison: a variant loaded from it carries its figures

    model.change(handlers.kind_for, [model], [kind], api_name="quantize_model_kind")
    every.click(lambda: list(VARIANTS), None, variants, queue=False, api_name="quantize_every_variant")
    default.click(lambda: DEFAULT_VARIANTS, None, variants, queue=False, api_name="quantize_default_variants")
    # Rows stream in as variants finish: the progress bar goes on the status line alone, not over the results.
    run.click(handlers.run, [control, model, kind, variants, sparsity, cut, calibration, calibration_file, source,
                             text_file, labels_csv, max_tokens, decode_tokens],
              [table, size_plot, speed_plot, csv, status, variant, measured],
              api_name="quantize_compare", show_progress_on=[status], **HEAVY)
    stop.click(lambda c: stop_run(c, "variant"), control, status, api_name="quantize_stop", **STOP)
    chat_outputs = [load_status, handlers.chat_model or gr.State(), shell.tabs]
    load.click(handlers.load_into_chat, [model, kind, variant, sparsity, cut, calibration, calibration_file, measured],
               chat_outputs, api_name="quantize_load_chat")
    return {"model": model, "variants": variants, "run": run, "stop": stop, "table": table, "variant": variant,
            "load": load, "status": status}
