"""The Explain tab's views of a language model's computation: the logit lens, activation patching and "why this
token, not that one". Layout and wiring only: core.explain.lens, .patching and .contrastive do the work, and
ui.explain_plots draws it. Handlers return {component: value}, so each output is named where it is set."""
from __future__ import annotations

import gradio as gr

from core.common.errors import InputError, PlaygroundError, check_number
from core.common.stopping import RunControl
from core.explain.attention import load_for_explain
from core.explain.contrastive import GRADIENT, SHAP
from core.explain.examples import DEFAULT_EXAMPLE, EXAMPLES
from core.explain.lens import LensResult, logit_lens
from core.explain.methods import CONTRAST_METHODS, ContrastRequest, contrast
from core.explain.patching import PatchingResult, Tracer, patching_pair, patching_sweep
from core.explain.residual import ATTN, MLP, RESID, SITES
from core.explain.shap_attribution import DEFAULT_MAX_EVALS, attribution_bar_figure
from core.models.device import on_gpu
from ui.components import HEAVY, STOP, failure_message, progress_callback
from ui.explain_plots import contrast_html, lens_heatmap, lens_lines, lens_top_html, patching_figure

LENS_NOTE = ("**Logit lens.** Each layer's residual stream is read through the model's own final norm and unembedding, "
             "as if the model stopped there. A cell is the top next-token guess after that layer at that position "
             "(darker = more probable); the top row is the model's real output, the strip under it its entropy. "
             "*Caveat:* middle layers were never trained to be read this way, so early rows mostly echo the input or "
             "show filler; the *tuned lens* trains a small translator per layer for that (not done here). "
             "**Click a cell** for its top-10; the lines show when the model's answer rises to the top.")
PATCH_NOTE = ("**Activation patching (causal tracing).** The model reads a clean and a corrupted prompt of the same "
              "token length. For each layer and position one state of the clean run is copied into the corrupted run, "
              "and the map shows how much of the clean answer's lead (logit difference clean answer − corrupted "
              "answer) comes back: 1 = all of it, 0 = none. *Caveat:* a cell shows that this one state is *enough* to "
              "bring the answer back for this pair, not that the model uses nothing else; effects spread over several "
              "states are missed, and one pair is one example, not a rule.")
CONTRAST_NOTE = ("**Why this token and not that one?** Each prompt token is scored by how it moves "
                 "log p(target) − log p(foil), which is also their logit difference. *Gradient × input* needs one "
                 "backward pass; *SHAP* masks tokens and re-runs the model up to the budget. The method shown and its "
                 "caveat are printed under the result; the same prompt can look different under the two.")
# A click on the lens heatmap: plotly keeps the cell under the pointer in _hoverdata (the entropy strip is curve 1).
LENS_CLICK_JS = ("document.addEventListener('click', (event) => { "
                 "const plot = event.target.closest && event.target.closest('#explain-lens-heatmap .js-plotly-plot'); "
                 "const cell = plot && plot._hoverdata && plot._hoverdata[0]; "
                 "if (cell && cell.curveNumber === 0) { trigger('click', {row: cell.y, position: cell.x}); } });")
SITE_CHOICES = [("residual stream (each layer's output)", RESID), ("attention output", ATTN), ("MLP output", MLP)]


def example_values(c: dict, name: str) -> dict:
    """Component -> value for every field an example pair fills."""
    example = EXAMPLES.get(name)
    if example is None:
        raise InputError(f"There is no example '{name}'; examples: {', '.join(EXAMPLES)}.")
    return {c["example"]: name, c["text"]: example.clean, c["lens_follow"]: f"{example.target}, {example.foil}",
            c["patch_clean"]: example.clean, c["patch_corrupted"]: example.corrupted, c["patch_target"]: example.target,
            c["patch_foil"]: example.foil, c["contrast_target"]: example.target, c["contrast_foil"]: example.foil}


class InsideHandlers:
    def __init__(self, services, c: dict):
        self.services, self.c = services, c

    def _load(self, model_id: str, progress: gr.Progress):
        return load_for_explain(self.services.manager, model_id, progress_callback(progress), attentions=False)

    # ---- logit lens -------------------------------------------------------------------------------------------------
    @on_gpu
    def lens(self, model_id, text, follow, progress=gr.Progress()) -> dict:
        c = self.c
        try:
            result = logit_lens(self._load(model_id, progress), text, follow or "")
        except PlaygroundError as err:
            return {c["lens_state"]: None, c["lens_status"]: failure_message(err), c["lens_heatmap"]: None,
                    c["lens_lines"]: None, c["lens_top"]: ""}
        for notice in result.notices:
            gr.Warning(notice)
        last_row, last = result.n_rows - 1, result.n_positions - 1
        answer, prob = result.predicted[last], float(result.prediction.prob[-1, last])
        status = (f"**{result.model_id}** · {last_row} layers × {result.n_positions} positions · {result.seconds:.2f} s. "
                  f"After the whole prompt the model predicts **{answer!r}** ({prob:.0%}); the lens has it on top from "
                  f"**{result.row_names[result.settles_at(last)]}** on."
                  + "".join(f"\n\n{n}" for n in result.notices))
        return {c["lens_state"]: result, c["lens_status"]: status, c["lens_heatmap"]: lens_heatmap(result),
                c["lens_lines"]: lens_lines(result, last), c["lens_top"]: lens_top_html(result, last_row, last),
                c["lens_row"]: gr.update(maximum=last_row, value=last_row),
                c["lens_position"]: gr.update(maximum=last, value=last)}

    def lens_cell(self, result: LensResult | None, row, position) -> dict:
        """A cell chosen with the sliders (or the API): its top-10, and the lines at its position. No model call."""
        c = self.c
        if result is None:
            return {c["lens_top"]: gr.skip(), c["lens_lines"]: gr.skip()}
        try:
            row = check_number("Row", row, 0, result.n_rows - 1, True)
            position = check_number("Position", position, 0, result.n_positions - 1, True)
        except PlaygroundError as err:
            gr.Warning(str(err))
            return {c["lens_top"]: gr.skip(), c["lens_lines"]: gr.skip()}
        return {c["lens_top"]: lens_top_html(result, row, position), c["lens_lines"]: lens_lines(result, position)}

    def lens_clicked(self, result: LensResult | None, event: gr.EventData) -> dict:
        """A heatmap cell clicked in the page (its row and position come with the click)."""
        row, position = int(event.row), int(event.position)
        return {**self.lens_cell(result, row, position), self.c["lens_row"]: row, self.c["lens_position"]: position}

    # ---- activation patching ----------------------------------------------------------------------------------------
    @on_gpu
    def patching(self, control: RunControl, model_id, clean, corrupted, target, foil, sites,
                 progress=gr.Progress()) -> dict:
        c = self.c
        try:
            chosen = [key for _label, key in SITE_CHOICES if key in (sites or ())]
            if not chosen:
                raise InputError("Tick at least one of: " + ", ".join(label for label, _ in SITE_CHOICES) + ".")
            loaded = self._load(model_id, progress)
            pair = patching_pair(loaded, clean, corrupted, target, foil)  # bad input is refused before waiting in line
            with self.services.work.run(control, "Activation patching", progress_callback(progress)) as stop:
                result = patching_sweep(Tracer(loaded, pair, chosen), stop, progress_callback(progress))
        except PlaygroundError as err:
            return {c["patch_status"]: failure_message(err), c["patch_figure"]: None}
        for notice in result.notices:
            gr.Warning(notice)
        return {c["patch_status"]: patching_status(result), c["patch_figure"]: patching_figure(result)}

    # ---- contrast ---------------------------------------------------------------------------------------------------
    @on_gpu
    def contrast(self, control: RunControl, model_id, text, target, foil, method, budget,
                 progress=gr.Progress()) -> dict:
        c = self.c
        try:
            request = ContrastRequest(text or "", target or "", foil or "", method or GRADIENT, budget)
            loaded = self._load(model_id, progress)
            inputs = request.inputs(loaded)
            with self.services.work.run(control, "Contrastive attribution", progress_callback(progress)) as stop:
                result = contrast(loaded, inputs, request, stop, progress_callback(progress))
        except PlaygroundError as err:
            return {c["contrast_state"]: None, c["contrast_status"]: failure_message(err),
                    c["contrast_output"]: gr.update(choices=[], value=None), c["contrast_html"]: None,
                    c["contrast_bars"]: None}
        attribution = result.attribution
        cost = (f"{attribution.model_evals} model evaluations in {attribution.batches} batches"
                if request.method == SHAP else "one forward and backward pass")
        status = (f"**{loaded.model_id}** · {CONTRAST_METHODS[request.method].name} · {cost} · "
                  f"{attribution.seconds:.1f} s. log p({result.target.label}) = {result.log_probs[0]:.2f}, "
                  f"log p({result.foil.label}) = {result.log_probs[1]:.2f}: the model prefers "
                  f"**{(result.target if result.difference > 0 else result.foil).label}** by {abs(result.difference):.2f}.")
        return {c["contrast_state"]: result, c["contrast_status"]: status,
                c["contrast_output"]: gr.update(choices=[(n, i) for i, n in enumerate(attribution.output_names)], value=0),
                c["contrast_html"]: contrast_html(result, 0), c["contrast_bars"]: attribution_bar_figure(attribution, 0)}

    def contrast_view(self, result, output) -> dict:
        c = self.c
        if result is None or output is None:
            return {c["contrast_html"]: gr.skip(), c["contrast_bars"]: gr.skip()}
        return {c["contrast_html"]: contrast_html(result, int(output)),
                c["contrast_bars"]: attribution_bar_figure(result.attribution, int(output))}


def patching_status(result: PatchingResult) -> str:
    """The run in numbers: both runs' logit differences and probabilities, what was patched, the strongest cell."""
    pair = f"{result.target.label} − {result.foil.label}"
    lines = [f"**{result.model_id}** · {result.runs} patched runs in {result.batches} batches · {result.seconds:.1f} s. "
             f"Logit difference {pair}: clean **{result.clean_diff:+.2f}** (P = {result.clean_probs[0]:.0%} vs "
             f"{result.clean_probs[1]:.0%}), corrupted **{result.corrupted_diff:+.2f}** (P = "
             f"{result.corrupted_probs[0]:.0%} vs {result.corrupted_probs[1]:.0%})."]
    for site in result.sites:
        layer, position, share = result.best(site)
        lines.append(f"Patching the {SITES[site]}: the most restored before the last position is layer {layer} at "
                     f"{result.clean.labels[position]!r} (position {position}), {share:.0%}.")
    return "\n\n".join(lines + list(result.notices))


def _tab_lens(c: dict, example) -> None:
    with gr.Tab("Logit lens", id="explain_lens_view"):
        gr.Markdown(LENS_NOTE)
        with gr.Row(equal_height=True):
            c["lens_follow"] = gr.Textbox(f"{example.target}, {example.foil}", scale=3,
                                          label="Also follow these words (comma-separated)",
                                          info="Each is read as the next word after the prompt; its first token is used")
            c["lens_run"] = gr.Button("Run the logit lens", variant="primary", scale=1)
        c["lens_status"] = gr.Markdown()
        c["lens_heatmap"] = gr.Plot(label="Logit lens (hover a cell for exact values, click it for its top-10)",
                                    elem_id="explain-lens-heatmap")
        with gr.Row():
            # Their ranges are set by each run: the model's layers and the prompt's tokens.
            c["lens_row"] = gr.Slider(0, 1, value=0, step=1, label="Row (0 = embeddings, the last = the output)")
            c["lens_position"] = gr.Slider(0, 1, value=0, step=1, label="Position (for the lines and the top-10)")
        with gr.Row():
            c["lens_lines"] = gr.Plot(label="The model's answer through the layers", scale=3)
            c["lens_top"] = gr.HTML(elem_id="explain-lens-top", js_on_load=LENS_CLICK_JS)



def _tab_patching(c: dict, example) -> None:
    with gr.Tab("Activation patching", id="explain_patching_view"):
        gr.Markdown(PATCH_NOTE)
        with gr.Row():
            c["patch_clean"] = gr.Textbox(example.clean, label="Clean prompt", scale=2)
            c["patch_corrupted"] = gr.Textbox(example.corrupted, label="Corrupted prompt (same number of tokens)",
                                              scale=2)
        with gr.Row():
            c["patch_target"] = gr.Textbox(example.target, label="Clean answer (one token)")
            c["patch_foil"] = gr.Textbox(example.foil, label="Corrupted answer (one token)")
            c["patch_sites"] = gr.CheckboxGroup(SITE_CHOICES, value=[RESID], label="Patch", scale=2,
                                                info="each site adds one map; attention and MLP outputs show which "
                                                     "block writes the information")
        with gr.Row():
            c["patch_run"] = gr.Button("Run patching", variant="primary")
            c["patch_stop"] = gr.Button("Stop", variant="stop", scale=0)
        c["patch_status"] = gr.Markdown()
        c["patch_figure"] = gr.Plot(label="Share of the clean logit difference restored (hover a cell)")


def _tab_contrast(c: dict, example) -> None:
    with gr.Tab("Why this token, not that one", id="explain_contrast_view"):
        gr.Markdown(CONTRAST_NOTE)
        with gr.Row():
            c["contrast_target"] = gr.Textbox(example.target, label="Target (one token): why this…")
            c["contrast_foil"] = gr.Textbox(example.foil, label="Foil (one token): …and not this?")
            c["contrast_method"] = gr.Radio([(m.name, key) for key, m in CONTRAST_METHODS.items()], value=GRADIENT,
                                            label="Method")
            c["contrast_budget"] = gr.Slider(20, 2000, value=DEFAULT_MAX_EVALS, step=10, label="SHAP budget",
                                             info="model evaluations at most (SHAP only)")
        with gr.Row():
            c["contrast_run"] = gr.Button("Explain the contrast", variant="primary")
            c["contrast_stop"] = gr.Button("Stop", variant="stop", scale=0)
        c["contrast_status"] = gr.Markdown()
        c["contrast_output"] = gr.Dropdown(label="Show", choices=[], interactive=True,
                                           info="the difference, or each token's log-probability on its own")
        c["contrast_html"] = gr.HTML()
        c["contrast_bars"] = gr.Plot(label="Strongest tokens")


def build(c: dict) -> None:
    """The three sub-tabs, inside the Explain tab's gr.Tabs; their components go into `c`."""
    example = EXAMPLES[DEFAULT_EXAMPLE]
    _tab_lens(c, example)
    _tab_patching(c, example)
    _tab_contrast(c, example)
    c["lens_state"], c["contrast_state"] = gr.State(), gr.State()


def wire(services, c: dict, control: gr.State, stop) -> None:
    handlers = InsideHandlers(services, c)
    lens_out = [c[k] for k in ("lens_state", "lens_status", "lens_heatmap", "lens_lines", "lens_top", "lens_row",
                               "lens_position")]
    c["lens_run"].click(handlers.lens, [c["model"], c["text"], c["lens_follow"]], lens_out, api_name="explain_lens")
    gr.on([c["lens_row"].input, c["lens_position"].input], handlers.lens_cell,
          [c["lens_state"], c["lens_row"], c["lens_position"]], [c["lens_top"], c["lens_lines"]],
          api_name="explain_lens_cell")
    c["lens_top"].click(handlers.lens_clicked, c["lens_state"],
                        [c["lens_top"], c["lens_lines"], c["lens_row"], c["lens_position"]], api_visibility="private")
    c["patch_run"].click(handlers.patching, [control, c["model"], c["patch_clean"], c["patch_corrupted"],
                                             c["patch_target"], c["patch_foil"], c["patch_sites"]],
                         [c["patch_status"], c["patch_figure"]], api_name="explain_patching", **HEAVY)
    c["contrast_run"].click(handlers.contrast, [control, c["model"], c["text"], c["contrast_target"],
                                                c["contrast_foil"], c["contrast_method"], c["contrast_budget"]],
                            [c[k] for k in ("contrast_state", "contrast_status", "contrast_output", "contrast_html",
                                            "contrast_bars")], api_name="explain_contrast", **HEAVY)
    c["contrast_output"].input(handlers.contrast_view, [c["contrast_state"], c["contrast_output"]],
                               [c["contrast_html"], c["contrast_bars"]], api_name="explain_contrast_output")
    for view in ("patch", "contrast"):
        c[f"{view}_stop"].click(stop, control, c[f"{view}_status"], api_name=f"explain_{view}_stop", **STOP)
    example_fields = list(example_values(c, DEFAULT_EXAMPLE))
    c["example"].input(lambda name: example_values(c, name), c["example"], example_fields, api_name="explain_example")
