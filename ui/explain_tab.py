"""Explain tab: attention maps (one head, head average, rollout, all layers x heads), SHAP token attributions, and
(ui.explain_inside) the logit lens, activation patching and contrastive attribution of a language model."""
from __future__ import annotations

import gradio as gr

from core.common.errors import PlaygroundError, check_number
from core.common.stopping import RunControl
from core.explain.attention import (
    DEFAULT_MAX_TOKENS,
    EXPLAIN_TASKS,
    VIEWS,
    AttentionMaps,
    extract_attention,
    load_for_explain,
    overview_figure,
    view_figure,
)
from core.explain.examples import EXAMPLES
from core.explain.methods import MAX_TOKENS_LIMIT, AttributionRequest, attribute
from core.explain.shap_attribution import (
    DEFAULT_MAX_EVALS,
    SHAP_DEFAULT_MAX_EVALS,
    Attribution,
    attribution_bar_figure,
    attribution_html,
)
from core.models.device import on_gpu
from core.models.registry import CAUSAL_LM, TEXT_CLASSIFICATION, presets
from ui import explain_inside
from ui.components import HEAVY, STOP, failure_message, model_picker, progress_callback, refresh_picker, stop_run

EXAMPLE_TEXT = "The acting was wonderful and the music moving, but the plot was predictable and far too long."
MECHANISM_NOTE = ("ℹ️ Attention shows the **mechanism**: where each token reads from inside the model. It is not a full "
                  "explanation of the output (weights are mixed by value vectors, MLPs and later layers). To see which "
                  "tokens actually changed the prediction, use **SHAP attributions** in the tab next to this one.")
SHAP_NOTE = ("Classifiers: SHAP (Partition explainer, tokens masked with the tokenizer's mask token) gives each token's "
             "contribution to each class's log-odds. Language models: SHAP on the **log-probability of the continuation** "
             "given the prompt (teacher forcing; masked prompt tokens become “...”), which is what "
             "`shap.models.TeacherForcing` computes. Cost grows with the budget: each evaluation is one forward pass.")


def default_model(services) -> str | None:
    """An offline classifier if there is one, else the offline chat model: explanations should work out of the box."""
    offline = [p.model_id for task in (TEXT_CLASSIFICATION, CAUSAL_LM) for p in presets(task) if p.offline]
    return offline[0] if offline else None


class ExplainHandlers:
    """Event handlers: widget values in, core calls, core results out as components."""

    def __init__(self, services):
        self.services = services

    def _load(self, model_id: str, progress: gr.Progress):
        return load_for_explain(self.services.manager, model_id, progress_callback(progress))

    # ---- attention ------------------------------------------------------------------------------------------------
    @on_gpu  # a ZeroGPU Space lends a GPU for the call; elsewhere a no-op
    def attention(self, model_id, text, max_tokens, view, layer, head, progress=gr.Progress()):
        try:
            max_tokens = check_number("Max tokens", max_tokens, 4, MAX_TOKENS_LIMIT, integer=True)
            layer, head = check_number("Layer", layer, 0, None, True), check_number("Head", head, 0, None, True)
            loaded = self._load(model_id, progress)
            maps = extract_attention(loaded, text, max_tokens)
            layer, head = min(layer, maps.n_layers - 1), min(head, maps.n_heads - 1)
            heatmap = view_figure(maps, view, layer, head)
        except PlaygroundError as err:
            return None, failure_message(err), None, None, gr.update(), gr.update()
        notice = maps.fitted.notice()
        if notice:
            gr.Warning(notice)
        status = (f"**{loaded.model_id}** · {maps.n_layers} layers x {maps.n_heads} heads · {len(maps.tokens)} tokens"
                  + (f"\n\n{notice}" if notice else ""))
        return (maps, status, heatmap, overview_figure(maps),
                gr.update(maximum=maps.n_layers - 1, value=layer), gr.update(maximum=maps.n_heads - 1, value=head))

    @staticmethod
    def attention_view(maps: AttentionMaps | None, view, layer, head):
        """Redraw from the weights already computed: switching layer, head or view costs no model call."""
        if maps is None:
            return gr.update()
        try:
            layer, head = check_number("Layer", layer, 0, maps.n_layers - 1, True), check_number("Head", head, 0, maps.n_heads - 1, True)
            return view_figure(maps, view, layer, head)
        except PlaygroundError as err:
            gr.Warning(str(err))
            return gr.update()

    # ---- SHAP -----------------------------------------------------------------------------------------------------
    @on_gpu
    def shap(self, control: RunControl, model_id, text, continuation, max_evals, max_tokens, progress=gr.Progress()):
        try:
            request = AttributionRequest(text, continuation or "", max_evals, max_tokens)
            loaded = self._load(model_id, progress)
            with self.services.work.run(control, "SHAP attributions", progress_callback(progress)) as stop:
                attribution, notice = attribute(loaded, request, stop, progress_callback(progress))
        except PlaygroundError as err:
            return None, failure_message(err), gr.update(choices=[], value=None), None, None
        notices = [n for n in (attribution.fitted.notice(), notice) if n]
        for n in notices:
            gr.Warning(n)
        status = f"**{loaded.model_id}** · {attribution.summary()}" + "".join(f"\n\n{n}" for n in notices)
        output = attribution.default_output
        choices = [(name, i) for i, name in enumerate(attribution.output_names)]
        return (attribution, status, gr.update(choices=choices, value=output), attribution_html(attribution, output),
                attribution_bar_figure(attribution, output))

    @staticmethod
    def shap_view(attribution: Attribution | None, output):
        if attribution is None or output is None:
            return gr.update(), gr.update()
        return attribution_html(attribution, int(output)), attribution_bar_figure(attribution, int(output))

    @staticmethod
    def stop(control: RunControl) -> str:
        return stop_run(control, "batch")


def build_tab(shell) -> dict[str, gr.Component]:
    services = shell.services
    handlers = ExplainHandlers(services)
    c: dict[str, gr.Component] = {}
    gr.Markdown("See inside a classifier or a language model: where its attention goes, which words drove its output, "
                "what it would predict after each layer and which internal states carry the answer. Works with the "
                "presets, any Hugging Face id or local folder, and models saved by Fine-tune.")
    with gr.Row():
        c["model"] = model_picker(services, *EXPLAIN_TASKS, value=default_model(services))
        refresh = gr.Button("↻ Refresh models", scale=0)
    with gr.Row():
        c["text"] = gr.Textbox(label="Text (for a language model: the prompt)", value=EXAMPLE_TEXT, lines=2, scale=3)
        c["example"] = gr.Dropdown([(e.title, name) for name, e in EXAMPLES.items()], value=None, label="Example pair",
                                   info="Fills the prompt and the lens, patching and contrast views", scale=1)
    c["max_tokens"] = gr.Slider(8, 128, value=DEFAULT_MAX_TOKENS, step=1, label="Max tokens",
                                info="Attention and SHAP: longer text is cut at this many tokens (special tokens "
                                     "included), with a notice")
    with gr.Tabs() as c["views"]:
        with gr.Tab("Attention", id="explain_attention_view"):
            gr.Markdown(MECHANISM_NOTE)
            with gr.Row():
                c["view"] = gr.Radio(list(VIEWS), value=VIEWS[0], label="View",
                                     info="Rollout (Abnar & Zuidema): attention flow through all layers, residual included")
                c["layer"] = gr.Slider(0, 11, value=0, step=1, label="Layer")
                c["head"] = gr.Slider(0, 11, value=0, step=1, label="Head")
            c["show"] = gr.Button("Show attention", variant="primary")
            c["attention_status"] = gr.Markdown()
            c["heatmap"] = gr.Plot(label="Attention (hover a cell for the exact weight)")
            c["overview"] = gr.Plot(label="Overview: every layer x head")
        with gr.Tab("SHAP attributions", id="explain_shap_view"):
            gr.Markdown(SHAP_NOTE)
            with gr.Row():
                c["continuation"] = gr.Textbox(label="Continuation to explain (language models)", scale=2,
                                               placeholder="empty: the model's own next token",
                                               info="Scored after the prompt; a space is put between them unless one has it")
                c["budget"] = gr.Slider(20, 2000, value=DEFAULT_MAX_EVALS, step=10, label="Budget (max model evaluations)",
                                        info=f"shap's own default is {SHAP_DEFAULT_MAX_EVALS}; more = finer detail, slower")
            with gr.Row():
                c["explain"] = gr.Button("Explain with SHAP", variant="primary")
                c["stop"] = gr.Button("Stop", variant="stop", scale=0)
            c["shap_status"] = gr.Markdown()
            c["output"] = gr.Dropdown(label="Output to show (class, or continuation token)", choices=[], interactive=True)
            c["coloured"] = gr.HTML()
            c["bars"] = gr.Plot(label="Strongest tokens")
        explain_inside.build(c)
    maps_state, attribution_state, control = gr.State(), gr.State(), gr.State(RunControl())

    refresh.click(refresh_picker(services, *EXPLAIN_TASKS), None, c["model"], api_name="explain_refresh_models")
    c["show"].click(handlers.attention, [c[k] for k in ("model", "text", "max_tokens", "view", "layer", "head")],
                    [maps_state, c["attention_status"], c["heatmap"], c["overview"], c["layer"], c["head"]],
                    api_name="explain_attention")
    for name in ("view", "layer", "head"):
        c[name].input(handlers.attention_view, [maps_state, c["view"], c["layer"], c["head"]], c["heatmap"],
                      api_name=f"explain_attention_{name}")
    c["explain"].click(handlers.shap, [control, *(c[k] for k in ("model", "text", "continuation", "budget", "max_tokens"))],
                       [attribution_state, c["shap_status"], c["output"], c["coloured"], c["bars"]],
                       api_name="explain_shap", **HEAVY)
    c["output"].input(handlers.shap_view, [attribution_state, c["output"]], [c["coloured"], c["bars"]],
                      api_name="explain_shap_output")
    c["stop"].click(handlers.stop, control, c["shap_status"], api_name="explain_stop", **STOP)
    explain_inside.wire(services, c, control, handlers.stop)
    return c
