"""One user's conversation: its exchanges (a message and every version of the reply), its model, its running reply.

A session lives in the user's gr.State (never a module global), so two people chatting at once share the served
models (one engine per model batches everyone's replies) but nothing else. Its RunControl gives each reply a fresh
StopFlag: Stop, a model change or a new message ends only this session's running reply.

A reply can branch at any token: the reply is continued from an alternative the model considered at that step,
and both versions are kept (the user moves between them with ◀ ▶). Retry also keeps the earlier version.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

from core.chat.engine import GenerationError
from core.chat.prompting import DEFAULT_SYSTEM_PROMPT, Prompt, Turn, build_prompt
from core.chat.remote import RemoteServer, ServerCheck, check_server, messages_for, remote_reply
from core.chat.sampling import SamplingSettings
from core.chat.serving import ChatRuntimes, ServedModel
from core.chat.token_view import TokenInfo, TokenStep, describe_steps
from core.chat.types import ReplyStats, UserAction, WaitingInfo
from core.common.errors import InputError
from core.common.stopping import RunControl

Progress = Callable[[float, str], None]


class EmptyMessageError(InputError):
    """Nothing to send."""


@dataclass
class Reply:
    """One version of an assistant reply."""

    text: str
    stats: ReplyStats | None = None
    settings: SamplingSettings | None = None
    steps: list[TokenStep] = field(default_factory=list)  # token ids and probabilities (local models)
    tokens: list[TokenInfo] = field(default_factory=list)  # what the token view shows
    branched_at: int | None = None  # the step of the reply it was branched from
    prompt_ids: list[int] = field(default_factory=list)  # what the model read before this reply (local models)


@dataclass
class Exchange:
    user: str
    replies: list[Reply] = field(default_factory=list)
    shown: int = 0  # which reply version is on screen

    @property
    def reply(self) -> Reply:
        return self.replies[self.shown]


@dataclass
class ChatUpdate:
    """What the chat shows while a reply streams; `tokens` (the token view) comes with the last update."""

    turns: list[Turn]
    stats: list[ReplyStats | None]
    prompt: Prompt
    notices: list[str]
    served: ServedModel | RemoteServer  # what wrote the reply
    done: bool = False
    tokens: list[TokenInfo] = field(default_factory=list)
    waiting: WaitingInfo | None = None  # while the reply waits in line: the place and estimated wait


@dataclass
class ChatSession:
    model_id: str
    trust_remote_code: bool = False
    exchanges: list[Exchange] = field(default_factory=list)
    control: RunControl = field(default_factory=RunControl)
    remote: RemoteServer | None = None  # set: replies come from that OpenAI-compatible server
    system: str | None = DEFAULT_SYSTEM_PROMPT  # of the last reply, for exports (None: no system prompt at all)

    def __deepcopy__(self, memo) -> ChatSession:
        """gr.State deep-copies each new session's value; a copy gets its own control (locks cannot be copied)."""
        return ChatSession(self.model_id, self.trust_remote_code, copy.deepcopy(self.exchanges, memo),
                           remote=self.remote, system=self.system)

    @property
    def turns(self) -> list[Turn]:
        return [Turn(e.user, e.reply.text) for e in self.exchanges]

    @property
    def stats(self) -> list[ReplyStats | None]:
        return [e.reply.stats for e in self.exchanges]

    def stop(self) -> None:
        self.control.stop()

    # ---- which model ---------------------------------------------------------------------------------------------
    def load(self, runtimes: ChatRuntimes, model_id: str, trust_remote_code: bool = False,
             progress: Progress | None = None) -> ServedModel:
        """Switch model once the new one is ready, which ends a reply still running (it says so); if the model cannot
        be loaded (ModelLoadError), the current model and its reply go on untouched."""
        served = runtimes.serve(model_id, trust_remote_code, progress)
        if not self.uses(served.model_id, trust_remote_code):
            self.control.stop(UserAction.LOAD)  # a new model: the reply of the old one ends (the same one: nothing)
        self.model_id, self.trust_remote_code, self.remote = served.model_id, trust_remote_code, None
        return served

    def uses(self, model_id: str, trust_remote_code: bool = False) -> bool:
        """Whether replies already come from this local model, with this remote-code choice."""
        return (model_id.strip(), trust_remote_code, self.remote) == (self.model_id, self.trust_remote_code, None)

    def connect(self, server: RemoteServer) -> ServerCheck:
        """Chat with a model on another server from now on; if it cannot be used, the current model stays."""
        check = check_server(server)
        self.control.stop(UserAction.CONNECT)
        self.remote = server
        return check

    def served(self, runtimes: ChatRuntimes, progress: Progress | None = None) -> ServedModel:
        return runtimes.serve(self.model_id, self.trust_remote_code, progress)

    # ---- replies -------------------------------------------------------------------------------------------------
    def reply(self, runtimes: ChatRuntimes, message: str, settings: SamplingSettings,
              system: str | None = DEFAULT_SYSTEM_PROMPT, progress: Progress | None = None) -> Iterator[ChatUpdate]:
        """Stream the model's reply to `message`; the turn (even a stopped, partial one) joins the history."""
        if not message.strip():
            raise EmptyMessageError("Type a message first: an empty message is not sent.")
        flag = self.control.begin(UserAction.SEND)  # a reply still running in this session ends first, and says why
        self.system = system
        if self.remote is not None:
            yield from self._remote_reply(Exchange(message), settings, system, flag)
            return
        served = self.served(runtimes, progress)
        prompt = build_prompt(served.tokenizer, self.turns, message, use_template=served.is_chat, system=system,
                              context=served.context, max_new_tokens=settings.max_new_tokens)
        yield from self._stream(served, Exchange(prompt.message), prompt, settings, flag, prompt.input_ids, [])

    def _stream(self, served: ServedModel, exchange: Exchange, prompt: Prompt, settings: SamplingSettings, flag,
                ids: list[int], prefix: list[TokenStep], branched_at: int | None = None) -> Iterator[ChatUpdate]:
        """Run one request and add its reply to `exchange` (appended to the conversation if it is new)."""
        notices = served.notices + prompt.notices
        earlier = [e for e in self.exchanges if e is not exchange]
        head = served.engine.decode([s.token_id for s in prefix])
        request = served.engine.submit(ids, settings, flag, prompt.stop_strings)
        chunk = None
        for chunk in request.chunks():
            if not chunk.done:
                turns = [Turn(e.user, e.reply.text) for e in earlier] + [Turn(exchange.user, head + chunk.text)]
                yield ChatUpdate(turns, [e.reply.stats for e in earlier] + [chunk.stats], prompt, notices, served,
                                 waiting=chunk.waiting)
        if chunk.failed:
            raise GenerationError(f"The reply failed and was not added to the conversation: {chunk.error}")
        steps = prefix + chunk.steps
        text = served.engine.decode([s.token_id for s in steps]) if prefix else chunk.text
        stats = replace(chunk.stats, tokens=len(steps))
        exchange.replies.append(Reply(text, stats, settings, steps, describe_steps(served.tokenizer, steps),
                                      branched_at, prompt.input_ids))
        exchange.shown = len(exchange.replies) - 1
        if exchange not in self.exchanges:
            self.exchanges.append(exchange)
        yield ChatUpdate(self.turns, self.stats, prompt, notices, served, done=True, tokens=exchange.reply.tokens)

    def _remote_reply(self, exchange: Exchange, settings: SamplingSettings, system: str | None, flag
                      ) -> Iterator[ChatUpdate]:
        """Stream the server's reply to `exchange` and add it as a new version (the exchange joins if it is new)."""
        server = self.remote
        earlier = [e for e in self.exchanges if e is not exchange]
        messages = messages_for(system, [Turn(e.user, e.reply.text) for e in earlier], exchange.user)
        prompt = Prompt([], json.dumps(messages, indent=1, ensure_ascii=False), "OpenAI messages (remote server)", (),
                        exchange.user)
        notices: list[str] = []
        chunk, tokens = None, []
        for chunk, tokens in remote_reply(server, messages, settings, flag):
            if not chunk.done:
                yield ChatUpdate([Turn(e.user, e.reply.text) for e in earlier] + [Turn(exchange.user, chunk.text)],
                                 [e.reply.stats for e in earlier] + [chunk.stats], prompt, notices, server)
        if not tokens and chunk.text:
            notices.append("The server sent no log probabilities, so the token view is empty for this reply.")
        exchange.replies.append(Reply(chunk.text, chunk.stats, settings, tokens=tokens))
        exchange.shown = len(exchange.replies) - 1
        if exchange not in self.exchanges:
            self.exchanges.append(exchange)
        yield ChatUpdate(self.turns, self.stats, prompt, notices, server, done=True, tokens=tokens)

    def branch(self, runtimes: ChatRuntimes, step: int, token_id: int, settings: SamplingSettings,
               progress: Progress | None = None) -> Iterator[ChatUpdate]:
        """Continue the last reply from an alternative token at `step`; the new version is kept beside the old."""
        if not self.exchanges or not self.exchanges[-1].reply.steps:
            raise InputError("Branching needs a reply from a local model first: send a message, then pick a token.")
        exchange = self.exchanges[-1]
        steps = exchange.reply.steps
        if not 0 <= step < len(steps) or token_id not in steps[step].alt_ids:
            raise InputError(f"Pick one of the model's top alternatives at a step between 1 and {len(steps)}.")
        flag = self.control.begin(UserAction.BRANCH)
        served = self.served(runtimes, progress)
        chosen = steps[step]
        forced = TokenStep(token_id, chosen.alt_probs[chosen.alt_ids.index(token_id)], chosen.alt_ids, chosen.alt_probs)
        prefix = steps[:step] + [forced]
        room = settings.max_new_tokens - len(prefix)
        if room < 1:
            raise InputError("Raise max new tokens: the branch point is already at the reply's length limit.")
        prompt_ids = exchange.reply.prompt_ids
        prompt = Prompt(prompt_ids, served.engine.decode(prompt_ids), "branch", (), exchange.user)
        yield from self._stream(served, exchange, prompt, replace(settings, max_new_tokens=room), flag,
                                prompt_ids + [s.token_id for s in prefix], prefix, branched_at=step)

    def show(self, offset: int) -> Exchange | None:
        """Move the last reply's shown version by `offset` (◀ -1, ▶ +1), within the versions there are."""
        if not self.exchanges:
            return None
        exchange = self.exchanges[-1]
        exchange.shown = max(0, min(len(exchange.replies) - 1, exchange.shown + offset))
        return exchange

    def retry(self, runtimes: ChatRuntimes, settings: SamplingSettings, system: str | None = DEFAULT_SYSTEM_PROMPT,
              progress: Progress | None = None) -> Iterator[ChatUpdate]:
        """Answer the last message again (a random or changed seed gives a different reply); the earlier version stays,
        one ◀ away."""
        if not self.exchanges:
            raise EmptyMessageError("Nothing to retry yet: send a message first.")
        flag = self.control.begin(UserAction.RETRY)
        self.system = system
        if self.remote is not None:
            yield from self._remote_reply(self.exchanges[-1], settings, system, flag)
            return
        served = self.served(runtimes, progress)
        exchange = self.exchanges[-1]
        prompt = build_prompt(served.tokenizer, self.turns[:-1], exchange.user, use_template=served.is_chat,
                              system=system, context=served.context, max_new_tokens=settings.max_new_tokens)
        yield from self._stream(served, exchange, prompt, settings, flag, prompt.input_ids, [])

    def undo(self) -> str:
        """Remove the last exchange and give back its message, for editing."""
        if not self.exchanges:
            return ""
        self.control.stop(UserAction.UNDO)
        return self.exchanges.pop().user

    def clear(self) -> None:
        self.control.stop(UserAction.CLEAR)
        self.exchanges = []
