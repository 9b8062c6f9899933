"""Chat tab: layout and event wiring; the conversation logic lives in core.chat.session."""
from __future__ import annotations

import html
from functools import partial

import gradio as gr

from core.chat.engine import ReplyStats
from core.chat.prompting import CHAT_TEMPLATE, DEFAULT_SYSTEM_PROMPT, Turn
from core.chat.remote import RemoteServer
from core.chat.sampling import SamplingSettings
from core.chat.serving import ServedModel
from core.chat.session import ChatSession, ChatUpdate, EmptyMessageError
from core.chat.token_view import render_html
from core.common.errors import InputError, PlaygroundError
from core.models.device import on_gpu
from core.models.precision import MIN_AGREEMENT, TURN_NEW_TOKENS, TURN_PROMPT_TOKENS
from core.models.registry import CAUSAL_LM
from core.services import Services
from ui.components import model_picker, progress_callback


def chat_messages(turns: list[Turn], stats: list[ReplyStats | None], waiting: str = "") -> list[dict]:
    """Chatbot messages, each reply followed by its tokens, tokens/s and time to first token; a reply still waiting
    in line shows its place instead."""
    messages = []
    for turn, stat in zip(turns, stats):
        line = f"\n\n<sub>{stat.describe()}</sub>" if stat and stat.finish else ""
        empty = f"⏳ *{waiting}*" if waiting else "…" if stat and not stat.finish else "*(no text)*"
        messages += [{"role": "user", "content": turn.user},
                     {"role": "assistant", "content": (turn.reply or empty) + line}]
    return messages


def model_summary(served: ServedModel | RemoteServer) -> str:
    """What serves the model and how faithfully: runtime, precision, agreement with fp32, perplexity."""
    if isinstance(served, RemoteServer):
        return (f"🌐 **{html.escape(served.model)}** on the OpenAI-compatible server **{html.escape(served.base_url)}** · "
                "temperature, top-p, max tokens and seed are sent; the token view shows the server's log "
                "probabilities when it returns them")
    prompt_format = CHAT_TEMPLATE if served.is_chat else "plain continuation (base model: see the prompt below)"
    lines = [f"✅ **{served.model_id}** · {served.family} · **{served.backend.describe()}** · prompt: {prompt_format}"]
    if served.quality is not None:
        lines.append(f"Quality: {served.quality.describe()}.")
    details = []
    if served.measured:
        details.append("ONNX exports measured: " + "; ".join(f"{p}: {q.describe()}, {q.decode_tok_s:.0f} tok/s"
                                                            for p, q in served.measured.items()))
    if served.loaded is not None and served.loaded.precision_measured:
        measured = ", ".join(f"{p} {m.prefill_s:.2f} s prompt + {m.token_s * 1000:.0f} ms/token ({m.agreement:.0%} "
                             "same predictions)" for p, m in served.loaded.precision_measured.items())
        details.append(f"PyTorch precisions measured once for this CPU: {measured}. Chosen: the fastest chat turn "
                       f"({TURN_PROMPT_TOKENS}-token prompt, {TURN_NEW_TOKENS} new tokens) keeping "
                       f"≥{MIN_AGREEMENT:.0%} of fp32's next-token predictions.")
    details += served.notices + served.backend.notes
    if details:  # folded away: long on a phone
        lines.append("<details><summary>How this runtime was chosen</summary><span class='notice'>"
                     + "<br>".join(html.escape(d, quote=False) for d in details) + "</span></details>")
    return "<br>".join(lines)


class ChatHandlers:
    """Event handlers: read the widgets, call the user's ChatSession, turn its updates into widget values."""

    def __init__(self, services: Services):
        self.services = services

    def load_model(self, session: ChatSession, model_id: str, allow_remote_code: bool, progress=gr.Progress()) -> str:
        try:
            return model_summary(session.load(self.services.chat, model_id, allow_remote_code,
                                              progress_callback(progress)))
        except PlaygroundError as err:
            gr.Warning(str(err))
            return f"❌ {err}\n\nStill using **{session.model_id}**."

    def connect_remote(self, session: ChatSession, base_url: str, model: str, api_key: str) -> str:
        try:
            if not self.services.settings.allow_remote_servers:
                raise InputError("Remote servers are turned off on this server (the operator can allow them with "
                                 "--allow-remote-servers).")
            return model_summary(session.connect(RemoteServer.checked(base_url, model, api_key)))
        except PlaygroundError as err:
            gr.Warning(str(err))
            current = session.remote.describe() if session.remote else session.model_id
            return f"❌ {err}\n\nStill using **{current}**."  # Markdown: gradio sanitizes any HTML in it

    @on_gpu  # a ZeroGPU Space lends a GPU for the call; elsewhere a no-op
    def send(self, session: ChatSession, message: str, system: str, temperature: float, top_k: int, top_p: float,
             min_p: float, repetition_penalty: float, max_new_tokens: int, seed: int, progress=gr.Progress()):
        yield from self._stream(session, message, lambda p: session.reply(
            self.services.chat, message, self._settings(temperature, top_k, top_p, min_p, repetition_penalty,
                                                           max_new_tokens, seed), system, p), progress)

    @on_gpu
    def retry(self, session: ChatSession, system: str, temperature: float, top_k: int, top_p: float, min_p: float,
              repetition_penalty: float, max_new_tokens: int, seed: int, progress=gr.Progress()):
        yield from self._stream(session, "", lambda p: session.retry(
            self.services.chat, self._settings(temperature, top_k, top_p, min_p, repetition_penalty, max_new_tokens,
                                                  seed), system, p), progress)

    def _settings(self, *values) -> SamplingSettings:
        settings = SamplingSettings(*values)
        cap = self.services.settings.max_new_tokens
        if settings.max_new_tokens > cap:
            raise InputError(f"Max new tokens is at most {cap} on this server; got {settings.max_new_tokens}.")
        return settings

    def _stream(self, session: ChatSession, message: str, start, progress):
        """Outputs: chatbot, message box, status, token view, prompt sent, model info."""
        first = True
        try:
            for update in start(progress_callback(progress)):
                if update.notices and first:
                    for notice in update.notices:
                        gr.Warning(notice)
                yield self._view(update, first)
                first = False
        except EmptyMessageError as err:
            gr.Warning(str(err))
            yield chat_messages(session.turns, session.stats), message, f"⚠️ {err}", gr.skip(), gr.skip(), gr.skip()
        except PlaygroundError as err:
            yield chat_messages(session.turns, session.stats), message, f"❌ {err}", gr.skip(), gr.skip(), gr.skip()

    @staticmethod
    def _view(update: ChatUpdate, first: bool):
        """While streaming only the conversation (and the status when it changes) is sent: every update of every
        user costs the server the same work, so what does not change stays out of it."""
        stats = update.stats[-1] if update.stats else None
        status = "\n\n".join([f"⚠️ {n}" for n in update.notices] + ([f"⏳ {update.waiting}"] if update.waiting else [])
                             + ([f"**Last reply:** {stats.describe()}"] if stats and update.done else []))
        once = first or update.done
        return (chat_messages(update.turns, update.stats, update.waiting), "" if once else gr.skip(),
                status if once or update.waiting else gr.skip(), render_html(update.tokens) if update.done else gr.skip(),
                update.prompt.text if once else gr.skip(), model_summary(update.served) if once else gr.skip())

    @staticmethod
    def stop(session: ChatSession) -> None:
        session.stop()

    @staticmethod
    def undo(session: ChatSession):
        message = session.undo()
        return chat_messages(session.turns, session.stats), message

    @staticmethod
    def clear(session: ChatSession):
        session.clear()
        return [], "", render_html([]), ""


def build_tab(shell) -> dict[str, gr.Component]:
    services: Services = shell.services
    handlers = ChatHandlers(services)
    session = gr.State(partial(ChatSession, services.default_chat_model))  # one ChatSession per browser session
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row(equal_height=True):
                model = model_picker(services, CAUSAL_LM, label="Chat model", value=services.default_chat_model)
                allow_remote = gr.Checkbox(False, label="Allow remote code", visible=services.settings.allow_remote_code,
                                           info="Runs the model's own Python code: only for authors you trust")
                load = gr.Button("Load", variant="secondary", scale=0, min_width=90)
            model_info = gr.Markdown(f"**{services.default_chat_model}** loads with your first message, or press Load.")
            with gr.Accordion("🌐 Remote server (OpenAI-compatible: vLLM, TGI, llama.cpp, Ollama...)", open=False,
                              visible=services.settings.allow_remote_servers):
                with gr.Row(equal_height=True):
                    remote_url = gr.Textbox(label="Server URL", placeholder="http://localhost:8000/v1", scale=3)
                    remote_model = gr.Textbox(label="Model name", placeholder="as GET /v1/models lists it", scale=2)
                    remote_key = gr.Textbox(label="API key (optional)", type="password", scale=2)
                    connect = gr.Button("Connect", scale=0, min_width=90)
            chatbot = gr.Chatbot(label="Conversation", height=440, buttons=["copy"],
                                 placeholder="Ask anything. Replies stream token by token; Stop ends them at once.")
            with gr.Row(equal_height=True):
                message = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, scale=6,
                                     max_lines=6, elem_id="chat-message")
                send = gr.Button("Send", variant="primary", scale=1, min_width=80)
                stop = gr.Button("Stop", variant="stop", scale=1, min_width=80)
            with gr.Row():
                retry = gr.Button("🔄 Retry", size="sm")
                undo = gr.Button("↩️ Undo", size="sm")
                clear = gr.Button("🗑️ Clear", size="sm")
            status = gr.Markdown(elem_id="chat-status")
            with gr.Accordion("Token view: how likely was each token?", open=True):
                token_view = gr.HTML(render_html([]))
            with gr.Accordion("Prompt sent to the model", open=False):
                prompt = gr.Textbox(show_label=False, lines=8, max_lines=20, interactive=False)
        with gr.Column(scale=1, min_width=260):
            system = gr.Textbox(DEFAULT_SYSTEM_PROMPT, label="System prompt", lines=3,
                                info="Instruct models get it through their chat template; base models as the first line")
            temperature = gr.Slider(0, 2, 0.7, step=0.05, label="Temperature", info="0 = greedy: always the likeliest token")
            top_k = gr.Slider(0, 200, 50, step=1, label="Top-k", info="Keep the k likeliest tokens (0 = off)")
            top_p = gr.Slider(0.05, 1, 0.95, step=0.01, label="Top-p", info="Keep the likeliest tokens up to this mass")
            min_p = gr.Slider(0, 0.5, 0.0, step=0.01, label="Min-p",
                              info="Drop tokens below this fraction of the top token's probability")
            repetition_penalty = gr.Slider(1, 2, 1.1, step=0.05, label="Repetition penalty", info="1 = off")
            max_new_tokens = gr.Slider(1, services.settings.max_new_tokens, min(256, services.settings.max_new_tokens),
                                       step=1, label="Max new tokens")
            seed = gr.Number(-1, precision=0, label="Seed",
                             info="Same seed and settings give the same reply; -1 = random (shown under the reply)")

    settings = [system, temperature, top_k, top_p, min_p, repetition_penalty, max_new_tokens, seed]
    stream_outputs = [chatbot, message, status, token_view, prompt, model_info]
    # Replies wait in the engine's own line (which shows each user their place) and decode in batches there.
    generating = dict(concurrency_limit=64, concurrency_id="chat_generate", show_progress="minimal")
    gr.on([message.submit, send.click], handlers.send, [session, message, *settings], stream_outputs,
          api_name="chat_send", **generating)
    retry.click(handlers.retry, [session, *settings], stream_outputs, api_name="chat_retry", **generating)
    # Stop must never wait behind running generations.
    stop.click(handlers.stop, session, None, api_name="chat_stop", concurrency_limit=None)
    undo.click(handlers.undo, session, [chatbot, message], api_name="chat_undo")
    clear.click(handlers.clear, session, [chatbot, message, token_view, prompt], api_name="chat_clear")
    # Picking a preset (or another tab sending a model here) loads it; Load retries, e.g. after ticking remote code.
    gr.on([load.click, model.change], handlers.load_model, [session, model, allow_remote], model_info,
          api_name="chat_load_model")
    connect.click(handlers.connect_remote, [session, remote_url, remote_model, remote_key], model_info,
                  api_name="chat_connect_remote")
    return {"model": model, "load": load, "allow_remote_code": allow_remote, "model_info": model_info,
            "chatbot": chatbot, "message": message, "send": send, "stop": stop, "session": session}
