"""Chat tab: the conversation (with branches, export and import) and its settings; the teaching views (compare,
sampling step by step, tokenizer) are built by ui.chat_teaching. Layout and wiring only: the logic lives in
core.chat."""
from __future__ import annotations

import html
import tempfile
from dataclasses import dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr

from core.chat.prompting import CHAT_TEMPLATE, DEFAULT_SYSTEM_PROMPT, Turn
from core.chat.remote import RemoteServer
from core.chat.sampling import SLIDER_RANGES, SamplingSettings
from core.chat.serving import ServedModel
from core.chat.session import ChatSession, ChatUpdate, EmptyMessageError
from core.chat.transcript import from_json, to_json
from core.chat.types import ReplyStats, UserAction, WaitingInfo
from core.common.errors import InputError, PlaygroundError
from core.common.uploads import read_text_file
from core.models.device import on_gpu
from core.models.precision import MIN_AGREEMENT, TURN_NEW_TOKENS, TURN_PROMPT_TOKENS
from core.models.registry import CAUSAL_LM
from core.services import Services
from ui import chat_teaching
from ui.chat_view import (
    BRANCH_JS,
    conversation_markdown,
    describe_candidate,
    describe_ort_settings,
    describe_quality,
    describe_stats,
    describe_waiting,
    token_view_html,
)
from ui.components import STOP, model_picker, progress_callback

SETTING_NAMES = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "max_new_tokens", "seed")


def chat_messages(turns: list[Turn], stats: list[ReplyStats | None], waiting: WaitingInfo | None = None) -> list[dict]:
    """Chatbot messages, each reply followed by its tokens, tokens/s and time to first token; a reply still waiting
    in line shows its place instead."""
    messages = []
    for turn, stat in zip(turns, stats):
        line = f"\n\n<sub>{describe_stats(stat)}</sub>" if stat and stat.finish else ""
        empty = f"⏳ *{describe_waiting(waiting)}*" if waiting else "…" if stat and not stat.finish else "*(no text)*"
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
        lines.append(f"Quality: {html.escape(describe_quality(served.quality), quote=False)}.")
    elif served.loaded is not None and served.loaded.source == "memory":
        lines.append("Quality: not measured against fp32 (no comparison in the Quantize tab measured this build: "
                     "compare it there with the same settings, then load it again).")
    details = []
    if served.measured:
        details.append("Candidates checked against fp32, fastest first: "
                       + "; ".join(describe_candidate(p, q) for p, q in served.measured.items()) + ".")
    if served.ort_settings is not None:
        details.append(describe_ort_settings(served.ort_settings) + ".")
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


def version_label(session: ChatSession) -> str:
    if not session.exchanges or len(session.exchanges[-1].replies) < 2:
        return ""
    exchange = session.exchanges[-1]
    reply = exchange.reply
    origin = f" · branched at token {reply.branched_at + 1}" if reply.branched_at is not None else ""
    return f"Last reply: version **{exchange.shown + 1} of {len(exchange.replies)}**{origin}"


def token_view(session: ChatSession) -> str:
    if not session.exchanges:
        return token_view_html([])
    reply = session.exchanges[-1].reply
    return token_view_html(reply.tokens, reply.steps or None)


@dataclass
class StreamView:
    """What one streaming update sends, output by output (STREAM_OUTPUTS order).

    Every output but the message box carries its value each time, unchanged ones repeated from the last update:
    gradio turns a repeated value into an empty diff for almost nothing, while gr.skip() makes it build a new
    component for each skipped output of each update (with 16 replies streaming that was most of the server's
    time). The message box is set only by the first update (it is cleared when the message is taken), so a next
    message typed while the reply streams is never touched; Enter queues it until the reply ends."""

    chatbot: list
    message: Any
    status: str
    token_view: str
    prompt: str
    model_info: str
    version: str

    def values(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self))

    @classmethod
    def failed(cls, session: ChatSession, message, status: str) -> StreamView:
        """A message that could not be sent: it stays in the box, the rest of the page as it was."""
        return cls(chat_messages(session.turns, session.stats), message, status, token_view(session), gr.skip(),
                   gr.skip(), version_label(session))


TYPE_AHEAD = "✍️ You can type your next message now: Enter queues it, and it is sent when this reply ends."


def stream_view(session: ChatSession, update: ChatUpdate, last: StreamView | None, took_message: bool) -> StreamView:
    """The next update; `took_message`: the first one clears the message box (Send took its text)."""
    stats = update.stats[-1] if update.stats else None
    notices = [f"⚠️ {n}" for n in update.notices]
    waiting = [f"⏳ {describe_waiting(update.waiting)}"] if update.waiting else []
    status = "\n\n".join(notices + waiting + ([f"**Last reply:** {describe_stats(stats)}"] if update.done and stats
                                             else [TYPE_AHEAD]))
    chatbot = chat_messages(update.turns, update.stats, update.waiting)
    if last is not None and not update.done:  # while streaming: the conversation and the status line change
        return replace(last, chatbot=chatbot, message=gr.skip(), status=status)
    return StreamView(chatbot, "" if last is None and took_message else gr.skip(), status,
                      token_view(session) if update.done or last is None else last.token_view, update.prompt.text,
                      model_summary(update.served), version_label(session))


class ChatHandlers:
    """Event handlers: read the widgets, call the user's ChatSession, turn its updates into widget values."""

    def __init__(self, services: Services):
        self.services = services

    def settings(self, temperature, top_k, top_p, min_p, repetition_penalty, max_new_tokens, seed) -> SamplingSettings:
        settings = SamplingSettings(temperature, top_k, top_p, min_p, repetition_penalty, max_new_tokens, seed)
        cap = self.services.settings.max_new_tokens
        if settings.max_new_tokens > cap:
            raise InputError(f"Max new tokens is at most {cap} on this server; got {settings.max_new_tokens}.")
        return settings

    # ---- the model ---------------------------------------------------------------------------------------------
    def load_model(self, session: ChatSession, model_id: str, allow_remote_code: bool, progress=gr.Progress()):
        """Outputs: the model summary, and the picker: back on the model that serves when the new one fails to load
        (the warning says why), so the picker always shows what serves."""
        try:
            served = session.load(self.services.chat, model_id, allow_remote_code, progress_callback(progress))
            return model_summary(served), gr.skip()
        except PlaygroundError as err:
            gr.Warning(str(err))
            return f"❌ {err}\n\nStill using **{session.model_id}**.", session.model_id

    def model_picked(self, session: ChatSession, model_id: str, allow_remote_code: bool,
                     progress=gr.Progress()):
        """The picker changed: load that model, unless it is the one that already serves (the picker set back after a
        failed load), so the failure's message stays on screen."""
        if session.uses(model_id, allow_remote_code):
            return gr.skip(), gr.skip()
        return self.load_model(session, model_id, allow_remote_code, progress)

    def connect_remote(self, session: ChatSession, base_url: str, model: str, api_key: str) -> str:
        try:
            if not self.services.settings.allow_remote_servers:
                raise InputError("Remote servers are turned off on this server (the operator can allow them with "
                                 "--allow-remote-servers).")
            check = session.connect(RemoteServer.checked(base_url, model, api_key))
            return f"{model_summary(session.remote)}<br>Connected: {html.escape(check.found)}."
        except PlaygroundError as err:
            gr.Warning(str(err))
            current = session.remote.describe() if session.remote else session.model_id
            return f"❌ {err}\n\nStill using **{current}**."  # Markdown: gradio sanitizes any HTML in it

    # ---- replies -----------------------------------------------------------------------------------------------
    @on_gpu  # a ZeroGPU Space lends a GPU for the call; elsewhere a no-op
    def send(self, session: ChatSession, message: str, system: str, temperature: float, top_k: int, top_p: float,
             min_p: float, repetition_penalty: float, max_new_tokens: int, seed: int, no_system: bool = False,
             progress=gr.Progress()):
        """`no_system`: send no system prompt at all (an empty box lets the chat template write its own)."""
        yield from self._stream(session, message, lambda p: session.reply(
            self.services.chat, message, self.settings(temperature, top_k, top_p, min_p, repetition_penalty,
                                                          max_new_tokens, seed), None if no_system else system, p),
                                progress)

    @on_gpu
    def retry(self, session: ChatSession, system: str, temperature: float, top_k: int, top_p: float, min_p: float,
              repetition_penalty: float, max_new_tokens: int, seed: int, no_system: bool = False,
              progress=gr.Progress()):
        yield from self._stream(session, gr.skip(), lambda p: session.retry(
            self.services.chat, self.settings(temperature, top_k, top_p, min_p, repetition_penalty, max_new_tokens,
                                                 seed), None if no_system else system, p), progress)

    @on_gpu
    def branch(self, session: ChatSession, step: int, token_id: int, temperature: float, top_k: int, top_p: float,
               min_p: float, repetition_penalty: float, max_new_tokens: int, seed: int, progress=gr.Progress()):
        """Continue the last reply from the model's alternative `token_id` at `step` (1-based, as the view shows)."""
        yield from self._stream(session, gr.skip(), lambda p: session.branch(
            self.services.chat, int(step) - 1, int(token_id), self.settings(
                temperature, top_k, top_p, min_p, repetition_penalty, max_new_tokens, seed), p), progress)

    def branch_clicked(self, session: ChatSession, temperature, top_k, top_p, min_p, repetition_penalty,
                       max_new_tokens, seed, event: gr.EventData, progress=gr.Progress()):
        """An alternative clicked in the token view: its step and token id come with the click."""
        yield from self.branch(session, int(event.step) + 1, int(event.token), temperature, top_k, top_p, min_p,
                               repetition_penalty, max_new_tokens, seed, progress)

    def _stream(self, session: ChatSession, message, start, progress):
        """Yields StreamView values while the reply streams (see StreamView for what each update sends); `message`
        is the text Send took from the box, or gr.skip() for Retry and Branch, which leave the box alone."""
        view = None
        try:
            for update in start(progress_callback(progress)):
                if update.notices and view is None:
                    for notice in update.notices:
                        gr.Warning(notice)
                view = stream_view(session, update, view, not isinstance(message, dict))
                yield view.values()
        except EmptyMessageError as err:
            gr.Warning(str(err))
            yield StreamView.failed(session, message, f"⚠️ {err}").values()
        except PlaygroundError as err:
            yield StreamView.failed(session, message, f"❌ {err}").values()

    @staticmethod
    def stop(session: ChatSession) -> None:
        session.stop()

    @staticmethod
    def show_version(session: ChatSession, offset: int):
        """Outputs: chatbot, token view, version label and the status line, all about the version now shown."""
        session.show(offset)
        stats = session.stats[-1] if session.stats else None
        return (chat_messages(session.turns, session.stats), token_view(session), version_label(session),
                f"**Last reply:** {describe_stats(stats)}" if stats else "")

    @staticmethod
    def undo(session: ChatSession):
        message = session.undo()
        return chat_messages(session.turns, session.stats), message, token_view(session), version_label(session)

    @staticmethod
    def clear(session: ChatSession):
        session.clear()
        return [], "", token_view_html([]), "", ""

    # ---- files -------------------------------------------------------------------------------------------------
    def export(self, session: ChatSession, with_tokens: bool):
        """The conversation as Markdown (to read, to hand in) and JSON (to restore, with every setting)."""
        if not session.exchanges:
            raise gr.Error("Nothing to export yet: send a message first.")
        if session.remote is not None:
            model = {"id": session.remote.model, "remote": session.remote.base_url}
        else:
            served = session.served(self.services.chat)
            model = {"id": served.model_id, "runtime": served.backend.runtime, "precision": served.backend.precision}
        folder = Path(tempfile.mkdtemp(prefix="llmpg-chat-"))
        (folder / "conversation.md").write_text(conversation_markdown(session, model["id"]), encoding="utf-8")
        (folder / "conversation.json").write_text(to_json(session, model, bool(with_tokens)), encoding="utf-8")
        return str(folder / "conversation.md"), str(folder / "conversation.json")

    def restore(self, session: ChatSession, path: str | None):
        """Outputs: chatbot, status, token view, version label, system prompt, "no system prompt", then the seven
        settings."""
        keep = (gr.skip(),) * (4 + len(SETTING_NAMES))  # token view, version, system prompt and its tick, settings
        if not path:
            return gr.skip(), "⚠️ Upload a conversation.json exported from this app.", *keep
        try:
            exchanges, system, model = from_json(read_text_file(path))
        except PlaygroundError as err:
            return gr.skip(), f"❌ {err}", *keep
        session.control.stop(UserAction.RESTORE)
        session.exchanges, session.system = exchanges, system
        settings = next((r.settings for e in reversed(exchanges) for r in [e.reply] if r.settings), None)
        values = [getattr(settings, n) if settings else gr.skip() for n in SETTING_NAMES]
        status = (f"Restored {len(exchanges)} exchange(s) written by **{model.get('id', 'an unknown model')}** "
                  f"({model.get('runtime', 'remote')}, {model.get('precision', '')}); the settings of the last reply "
                  "are back on the sliders.")
        return (chat_messages(session.turns, session.stats), status, token_view(session), version_label(session),
                system or "", system is None, *values)


def build_tab(shell) -> dict[str, gr.Component]:
    services: Services = shell.services
    handlers = ChatHandlers(services)
    session = gr.State(partial(ChatSession, services.default_chat_model))  # one ChatSession per browser session
    c: dict[str, gr.Component] = {"session": session}
    with gr.Row():
        with gr.Column(scale=3, min_width=320):
            with gr.Row(equal_height=True):
                c["model"] = model_picker(services, CAUSAL_LM, label="Chat model", value=services.default_chat_model)
                c["allow_remote_code"] = gr.Checkbox(False, label="Allow remote code",
                                                     visible=services.settings.allow_remote_code,
                                                     info="Runs the model's own Python code: only for authors you trust")
                c["load"] = gr.Button("Load", variant="secondary", scale=0, min_width=90)
            c["model_info"] = gr.Markdown(f"**{services.default_chat_model}** loads with your first message, or press "
                                          "Load.")
            with gr.Accordion("🌐 Remote server (OpenAI-compatible: vLLM, TGI, llama.cpp, Ollama...)", open=False,
                              visible=services.settings.allow_remote_servers):
                with gr.Row(equal_height=True):
                    remote_url = gr.Textbox(label="Server URL", placeholder="http://localhost:8000/v1", scale=3)
                    remote_model = gr.Textbox(label="Model name", placeholder="as GET /v1/models lists it", scale=2)
                    remote_key = gr.Textbox(label="API key (optional)", type="password", scale=2)
                    connect = gr.Button("Connect", scale=0, min_width=90)
            with gr.Tabs() as c["views"]:
                with gr.Tab("Conversation", id="conversation"):
                    conversation(c)
                chat_teaching.build(shell, c)
        with gr.Column(scale=1, min_width=260):
            c["system"] = gr.Textbox(DEFAULT_SYSTEM_PROMPT, label="System prompt", lines=3,
                                     info="Instruct models get it through their chat template; base models as the first "
                                          "line")
            c["no_system"] = gr.Checkbox(False, label="No system prompt",
                                         info="Send none at all: with an empty box, some chat templates write their own")
            c["temperature"] = gr.Slider(*SLIDER_RANGES["temperature"], 0.7, step=0.05, label="Temperature",
                                         info="0 = greedy: always the likeliest token")
            c["top_k"] = gr.Slider(*SLIDER_RANGES["top_k"], 50, step=1, label="Top-k",
                                   info="Keep the k likeliest tokens (0 = off)")
            c["top_p"] = gr.Slider(*SLIDER_RANGES["top_p"], 0.95, step=0.01, label="Top-p",
                                   info="Keep the likeliest tokens up to this mass")
            c["min_p"] = gr.Slider(*SLIDER_RANGES["min_p"], 0.0, step=0.01, label="Min-p",
                                   info="Drop tokens below this fraction of the top token's probability")
            c["repetition_penalty"] = gr.Slider(*SLIDER_RANGES["repetition_penalty"], 1.1, step=0.05,
                                                label="Repetition penalty", info="1 = off")
            cap = services.settings.max_new_tokens
            c["max_new_tokens"] = gr.Slider(1, cap, min(256, cap), step=1, label="Max new tokens")
            c["seed"] = gr.Number(-1, precision=0, label="Seed",
                                  info="Same seed and settings give the same reply; -1 = random (shown under the reply)")
            c["share"] = gr.Button("🔗 Share this setup", size="sm")
            c["share_link"] = gr.Textbox(label="Link to this setup", visible=False, buttons=["copy"], interactive=False,
                                         elem_id="chat-share-link")
    wire(handlers, c, services)
    chat_teaching.wire(services, c)
    connect.click(handlers.connect_remote, [session, remote_url, remote_model, remote_key], c["model_info"],
                  api_name="chat_connect_remote")
    return c


def conversation(c: dict) -> None:
    """The Conversation view's components, added to `c`."""
    c["chatbot"] = gr.Chatbot(label="Conversation", height=440, buttons=["copy"],
                              placeholder="Ask anything. Replies stream token by token; Stop ends them at once.")
    with gr.Row(equal_height=True):
        c["message"] = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, scale=6, max_lines=6,
                                  elem_id="chat-message")
        c["send"] = gr.Button("Send", variant="primary", scale=1, min_width=80)
        c["stop"] = gr.Button("Stop", variant="stop", scale=1, min_width=80)
    with gr.Row():
        c["retry"] = gr.Button("🔄 Retry", size="sm")
        c["undo"] = gr.Button("↩️ Undo", size="sm")
        c["clear"] = gr.Button("🗑️ Clear", size="sm")
        c["previous"] = gr.Button("◀", size="sm", min_width=40, elem_id="chat-previous")
        c["next"] = gr.Button("▶", size="sm", min_width=40, elem_id="chat-next")
    c["version"] = gr.Markdown(elem_id="chat-version")
    c["status"] = gr.Markdown(elem_id="chat-status")
    with gr.Accordion("Token view: how likely was each token? (tap a token for its alternatives)", open=True):
        c["token_view"] = gr.HTML(token_view_html([]), js_on_load=BRANCH_JS, elem_id="chat-token-view")
    with gr.Row(visible=False):  # the API's way to branch: step and token id by value
        c["branch_step"] = gr.Number(precision=0, label="Step")
        c["branch_token"] = gr.Number(precision=0, label="Token id")
        c["branch"] = gr.Button("Branch")
    with gr.Accordion("Prompt sent to the model", open=False):
        c["prompt"] = gr.Textbox(show_label=False, lines=8, max_lines=20, interactive=False, elem_id="chat-prompt")
    with gr.Accordion("Save or restore the conversation", open=False):
        with gr.Row():
            c["with_tokens"] = gr.Checkbox(True, label="Include each token's probability and alternatives (JSON)")
            c["export"] = gr.Button("Export Markdown + JSON", size="sm")
        with gr.Row():
            c["markdown_file"] = gr.File(label="conversation.md", interactive=False)
            c["json_file"] = gr.File(label="conversation.json", interactive=False)
            c["upload"] = gr.File(label="Restore from a conversation.json", file_types=[".json"], type="filepath")


def wire(handlers: ChatHandlers, c: dict, services: Services) -> None:
    session = c["session"]
    settings = [c[n] for n in SETTING_NAMES]
    stream_outputs = [c[f.name] for f in fields(StreamView)]
    # Replies wait in the engine's own line (which shows each user their place) and decode in batches there.
    generating = dict(concurrency_limit=64, concurrency_id="chat_generate", show_progress="minimal")
    # A message sent while a reply streams waits for it (always_last) and is then sent from the box, where it stayed.
    gr.on([c["message"].submit, c["send"].click], handlers.send,
          [session, c["message"], c["system"], *settings, c["no_system"]], stream_outputs, api_name="chat_send",
          trigger_mode="always_last", **generating)
    c["retry"].click(handlers.retry, [session, c["system"], *settings, c["no_system"]], stream_outputs,
                     api_name="chat_retry", **generating)
    c["branch"].click(handlers.branch, [session, c["branch_step"], c["branch_token"], *settings], stream_outputs,
                      api_name="chat_branch", **generating)
    c["token_view"].click(handlers.branch_clicked, [session, *settings], stream_outputs, api_visibility="private",
                          **generating)
    c["stop"].click(handlers.stop, session, None, api_name="chat_stop", **STOP)
    for button, offset, name in ((c["previous"], -1, "chat_previous_version"), (c["next"], 1, "chat_next_version")):
        button.click(partial(handlers.show_version, offset=offset), session,
                     [c["chatbot"], c["token_view"], c["version"], c["status"]], api_name=name)
    c["undo"].click(handlers.undo, session, [c["chatbot"], c["message"], c["token_view"], c["version"]],
                    api_name="chat_undo")
    c["clear"].click(handlers.clear, session, [c["chatbot"], c["message"], c["token_view"], c["prompt"], c["version"]],
                     api_name="chat_clear")
    c["export"].click(handlers.export, [session, c["with_tokens"]], [c["markdown_file"], c["json_file"]],
                      api_name="chat_export")
    c["upload"].upload(handlers.restore, [session, c["upload"]],
                       [c["chatbot"], c["status"], c["token_view"], c["version"], c["system"], c["no_system"],
                        *settings], api_name="chat_import")
    # Picking a preset (or another tab sending a model here) loads it; Load retries, e.g. after ticking remote code.
    loading = dict(inputs=[session, c["model"], c["allow_remote_code"]], outputs=[c["model_info"], c["model"]])
    c["load"].click(handlers.load_model, api_name="chat_load_model", **loading)
    c["model"].change(handlers.model_picked, api_visibility="private", **loading)
