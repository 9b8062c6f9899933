"""The Chat tab's teaching views: two replies side by side, sampling step by step, and the tokenizer.
Layout and wiring only: core.chat.compare, core.chat.stepwise and core.chat.tokenizer_view do the work."""
from __future__ import annotations

import html

import gradio as gr

from core.chat.compare import CompareUpdate, Divergence, Side, compare
from core.chat.sampling import SLIDER_RANGES, SamplingSettings
from core.chat.serving import PRECISION_CHOICES
from core.chat.session import ChatSession
from core.chat.stepwise import sampling_steps
from core.chat.token_view import TokenInfo
from core.chat.tokenizer_view import tokenize
from core.common.errors import PlaygroundError, check_number
from core.common.stopping import RunControl
from core.models.registry import CAUSAL_LM, OFFLINE_ENCODER
from ui.chat_view import describe_sampling, describe_stats, stages_figure, token_view_html, tokenizer_html
from ui.components import STOP, model_picker, progress_callback, stop_run

COMPARE_EXAMPLE = "Write one sentence about the sea."


def divergence_html(divergence: Divergence | None, same_greedy: bool) -> str:
    """Where the two replies part ways, with what each model believed at that step (escaped)."""
    if divergence is None:
        note = " (the same model and greedy settings always agree)" if same_greedy else ""
        return f"<p class='notice'>The two replies never part ways{note}.</p>"

    def column(info: TokenInfo) -> str:
        rows = "".join(f"<tr><td>{html.escape(a.text)!s}</td><td>{a.prob:.1%}</td></tr>" for a in info.alternatives)
        return (f"<td><b>{html.escape(info.text)}</b> ({info.prob:.1%})<table>{rows}</table></td>")

    return (f"<div class='divergence'><p>They part ways at token <b>{divergence.step + 1}</b>, after "
            f"“{html.escape(divergence.common[-120:])}”.</p><table><tr><th>A chose</th><th>B chose</th></tr>"
            f"<tr>{column(divergence.a)}{column(divergence.b)}</tr></table></div>")


class TeachingHandlers:
    def __init__(self, services):
        self.services = services

    def compare(self, control: RunControl, prompt, system, model_a, precision_a, temperature_a, seed_a, model_b,
                precision_b, temperature_b, seed_b, max_new_tokens, progress=gr.Progress()):
        """Outputs: A's reply, B's reply, A's token view, B's token view, the divergence, a status line."""
        try:
            cap = self.services.settings.max_new_tokens
            tokens = check_number("Max new tokens", max_new_tokens, 1, cap, integer=True)
            sides = [Side(model, SamplingSettings(temperature=t, max_new_tokens=tokens, seed=s, repetition_penalty=1.0),
                          precision or "auto")
                     for model, precision, t, s in ((model_a, precision_a, temperature_a, seed_a),
                                                    (model_b, precision_b, temperature_b, seed_b))]
            update = None
            for update in compare(self.services.chat, prompt, *sides, control.begin(), system,
                                  progress_callback(progress)):
                yield self._view(update, sides)
        except PlaygroundError as err:
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"❌ {err}"

    @staticmethod
    def _view(update: CompareUpdate, sides: list[Side]):
        texts = [f"{chunk.text}\n\n<sub>{describe_stats(chunk.stats)} · {served.backend.describe()}</sub>"
                 for chunk, served in zip((update.a, update.b), update.served)]
        if not update.done:
            return *texts, gr.skip(), gr.skip(), gr.skip(), "Both replies are streaming…"
        same = sides[0] == sides[1] and sides[0].settings.greedy
        return (*texts, token_view_html(update.tokens[0]), token_view_html(update.tokens[1]),
                divergence_html(update.divergence, same), "Done.")

    def sampling(self, session: ChatSession, step):
        """Outputs: the stage charts, what happened at that step."""
        try:
            steps = sampling_steps(self.services.chat, session, check_number("Step", step, 1, None, integer=True))
        except PlaygroundError as err:
            return None, f"⚠️ {err}"
        return stages_figure(steps), describe_sampling(steps)

    def tokenize(self, text, model_a, model_b):
        outputs = []
        for model_id in (model_a, model_b):
            if not model_id:
                outputs.append("")
                continue
            try:
                tokenizer = self.services.manager.tokenizer(model_id)
                outputs.append(tokenizer_html(tokenize(tokenizer, text, model_id)))
            except PlaygroundError as err:
                outputs.append(f"<p>⚠️ {html.escape(str(err))}</p>")
        return tuple(outputs)


def build(shell, c: dict) -> None:
    """The three teaching sub-tabs, inside the Chat tab's Tabs; their components go into `c`."""
    services = shell.services
    precisions = list(PRECISION_CHOICES)
    with gr.Tab("Compare", id="compare"):
        c["teaching_control"] = gr.State(RunControl())  # inside a Tab: anything directly in Tabs becomes a tab
        gr.Markdown("One prompt, two replies streaming at once: two models, or one model with two temperatures or "
                    "two precisions. The first token where they part ways is shown with both distributions.")
        c["compare_prompt"] = gr.Textbox(COMPARE_EXAMPLE, label="Prompt", lines=2)
        with gr.Row():
            for side, temperature in (("a", 0.0), ("b", 1.2)):
                with gr.Column(min_width=260):
                    c[f"compare_model_{side}"] = model_picker(services, CAUSAL_LM, label=f"Model {side.upper()}",
                                                              value=services.default_chat_model)
                    with gr.Row():
                        c[f"compare_precision_{side}"] = gr.Dropdown(precisions, value="auto", label="Precision",
                                                                     min_width=120)
                        c[f"compare_temperature_{side}"] = gr.Slider(*SLIDER_RANGES["temperature"], temperature,
                                                                     step=0.05, label="Temperature",
                                                                     min_width=120)
                        c[f"compare_seed_{side}"] = gr.Number(7, precision=0, label="Seed", min_width=80)
        with gr.Row():
            c["compare_tokens"] = gr.Slider(1, services.settings.max_new_tokens, 40, step=1, label="Max new tokens")
            c["compare_run"] = gr.Button("Compare", variant="primary")
            c["compare_stop"] = gr.Button("Stop", variant="stop")
        c["compare_status"] = gr.Markdown()
        with gr.Row():
            for side in ("a", "b"):
                with gr.Column(min_width=260):
                    c[f"compare_reply_{side}"] = gr.Markdown(label=f"Reply {side.upper()}", container=True)
                    c[f"compare_tokens_{side}"] = gr.HTML(token_view_html([]))
        c["compare_divergence"] = gr.HTML()
    with gr.Tab("Sampling", id="sampling"):
        gr.Markdown("Pick a token of the conversation's last reply (from a model on this machine) to see how the "
                    "engine chose it: the model's raw distribution, then the distribution after each setting in the "
                    "order the engine applies them. The last chart is what the engine drew from.")
        with gr.Row():
            c["sampling_step"] = gr.Number(1, precision=0, label="Token number in the last reply", minimum=1)
            c["sampling_show"] = gr.Button("Show the stages", variant="primary")
        c["sampling_text"] = gr.Markdown()
        c["sampling_plot"] = gr.Plot(label="Top 20 tokens after each stage")
    with gr.Tab("Tokenizer", id="tokenizer"):
        gr.Markdown("How a model cuts text into tokens. Byte-level BPE (GPT-2, SmolLM2) spells a leading space 'Ġ', "
                    "SentencePiece (LLaMA) '▁', WordPiece (BERT, MiniLM) marks a word's continuation with '##'. Hover a "
                    "piece for its spelling and id.")
        c["tokenizer_text"] = gr.Textbox("Unbelievably, tokenizers split Schwarzenegger into pieces!", label="Text",
                                         lines=3)
        with gr.Row():
            c["tokenizer_a"] = model_picker(services, CAUSAL_LM, label="Tokenizer A", value=services.default_chat_model)
            c["tokenizer_b"] = gr.Dropdown([services.default_chat_model, OFFLINE_ENCODER], value=OFFLINE_ENCODER,
                                           allow_custom_value=True, label="Tokenizer B (optional)")
            c["tokenizer_run"] = gr.Button("Tokenize", variant="primary", scale=0)
        with gr.Row():
            c["tokenizer_view_a"], c["tokenizer_view_b"] = gr.HTML(), gr.HTML()


def wire(services, c: dict) -> None:
    """Events of the teaching views; after the whole Chat tab is laid out (they read its system prompt)."""
    h = TeachingHandlers(services)
    control = c["teaching_control"]
    sides = [c[f"compare_{what}_{side}"] for side in ("a", "b") for what in ("model", "precision", "temperature", "seed")]
    c["compare_run"].click(h.compare, [control, c["compare_prompt"], c["system"], *sides, c["compare_tokens"]],
                           [c["compare_reply_a"], c["compare_reply_b"], c["compare_tokens_a"], c["compare_tokens_b"],
                            c["compare_divergence"], c["compare_status"]],
                           api_name="chat_compare", concurrency_limit=64, concurrency_id="chat_generate")
    c["compare_stop"].click(lambda ctl: stop_run(ctl, "token"), control, c["compare_status"],
                            api_name="chat_compare_stop", **STOP)
    c["sampling_show"].click(h.sampling, [c["session"], c["sampling_step"]], [c["sampling_plot"], c["sampling_text"]],
                             api_name="sampling_steps")
    c["tokenizer_run"].click(h.tokenize, [c["tokenizer_text"], c["tokenizer_a"], c["tokenizer_b"]],
                             [c["tokenizer_view_a"], c["tokenizer_view_b"]], api_name="tokenize")
