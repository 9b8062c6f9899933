"""One user's conversation: its turns, its chosen model and the stop flag of its running reply.

A session lives in the user's gr.State (never a module global), so two people chatting at once
share the served models (one engine per model batches everyone's replies) but nothing else. Its
RunControl gives each reply a fresh StopFlag: Stop, a model change or a new message ends only this
session's running reply.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Callable, Iterator

from core.chat.engine import FAILED, GenerationError, ReplyStats
from core.chat.prompting import DEFAULT_SYSTEM_PROMPT, Prompt, Turn, build_prompt
from core.chat.remote import RemoteServer, check_server, messages_for, remote_reply
from core.chat.sampling import SamplingSettings
from core.chat.serving import ChatRuntimes, ServedModel
from core.chat.token_view import TokenInfo, describe_steps
from core.common.errors import InputError
from core.common.stopping import RunControl

Progress = Callable[[float, str], None]


class EmptyMessageError(InputError):
    """Nothing to send."""


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
    waiting: str = ""  # while the reply waits in line: the place and estimated wait


@dataclass
class ChatSession:
    model_id: str
    trust_remote_code: bool = False
    turns: list[Turn] = field(default_factory=list)
    stats: list[ReplyStats | None] = field(default_factory=list)
    control: RunControl = field(default_factory=RunControl)
    remote: RemoteServer | None = None  # set: replies come from that OpenAI-compatible server

    def __deepcopy__(self, memo) -> ChatSession:
        """gr.State deep-copies each new session's value; a copy gets its own control (locks cannot be copied)."""
        return ChatSession(self.model_id, self.trust_remote_code, copy.deepcopy(self.turns, memo),
                           copy.deepcopy(self.stats, memo), remote=self.remote)

    def stop(self) -> None:
        self.control.stop()

    def load(self, runtimes: ChatRuntimes, model_id: str, trust_remote_code: bool = False,
             progress: Progress | None = None) -> ServedModel:
        """Switch model: the running reply stops first; on ModelLoadError the current model stays."""
        self.stop()
        served = runtimes.serve(model_id, trust_remote_code, progress)
        self.model_id, self.trust_remote_code, self.remote = served.model_id, trust_remote_code, None
        return served

    def connect(self, server: RemoteServer) -> RemoteServer:
        """Chat with a model on another server from now on; if it cannot be used, the current model stays."""
        self.stop()
        check_server(server)
        self.remote = server
        return server

    def served(self, runtimes: ChatRuntimes, progress: Progress | None = None) -> ServedModel:
        return runtimes.serve(self.model_id, self.trust_remote_code, progress)

    def reply(self, runtimes: ChatRuntimes, message: str, settings: SamplingSettings,
              system: str = DEFAULT_SYSTEM_PROMPT, progress: Progress | None = None) -> Iterator[ChatUpdate]:
        """Stream the model's reply to `message`; the turn (even a stopped, partial one) joins the history."""
        if not message.strip():
            raise EmptyMessageError("Type a message first: an empty message is not sent.")
        flag = self.control.begin()  # a reply still running in this session ends before the new one starts
        if self.remote is not None:
            yield from self._remote_reply(message, settings, system, flag)
            return
        served = self.served(runtimes, progress)
        prompt = build_prompt(served.tokenizer, self.turns, message, use_template=served.is_chat, system=system,
                              context=served.context, max_new_tokens=settings.max_new_tokens)
        notices = served.notices + prompt.notices
        request = served.engine.submit(prompt.input_ids, settings, flag, prompt.stop_strings)
        chunk = None
        for chunk in request.chunks():
            if not chunk.done:
                yield ChatUpdate(self.turns + [Turn(prompt.message, chunk.text)], self.stats + [chunk.stats], prompt,
                                 notices, served, waiting=chunk.waiting)
        if chunk.stats.finish == FAILED:
            raise GenerationError(f"The reply failed and was not added to the conversation: {chunk.error}")
        # Trimmed turns stay on screen; the next prompt trims again from what fits.
        self.turns.append(Turn(prompt.message, chunk.text))
        self.stats.append(chunk.stats)
        yield ChatUpdate(list(self.turns), list(self.stats), prompt, notices, served, done=True,
                         tokens=describe_steps(served.tokenizer, chunk.steps))

    def _remote_reply(self, message: str, settings: SamplingSettings, system: str,
                      flag) -> Iterator[ChatUpdate]:
        server = self.remote
        messages = messages_for(system, self.turns, message)
        prompt = Prompt([], json.dumps(messages, indent=1, ensure_ascii=False), "OpenAI messages (remote server)", (),
                        message)
        notices: list[str] = []
        chunk, tokens = None, []
        for chunk, tokens in remote_reply(server, messages, settings, flag):
            if not chunk.done:
                yield ChatUpdate(self.turns + [Turn(message, chunk.text)], self.stats + [chunk.stats], prompt, notices,
                                 server)
        if not tokens and chunk.text:
            notices.append("The server sent no log probabilities, so the token view is empty for this reply.")
        self.turns.append(Turn(message, chunk.text))
        self.stats.append(chunk.stats)
        yield ChatUpdate(list(self.turns), list(self.stats), prompt, notices, server, done=True, tokens=tokens)

    def retry(self, runtimes: ChatRuntimes, settings: SamplingSettings, system: str = DEFAULT_SYSTEM_PROMPT,
              progress: Progress | None = None) -> Iterator[ChatUpdate]:
        """Answer the last message again (a random or changed seed gives a different reply)."""
        if not self.turns:
            raise EmptyMessageError("Nothing to retry yet: send a message first.")
        message = self.undo()
        yield from self.reply(runtimes, message, settings, system, progress)

    def undo(self) -> str:
        """Remove the last turn and give back its message, for editing."""
        if not self.turns:
            return ""
        self.stop()
        self.stats.pop()
        return self.turns.pop().user

    def clear(self) -> None:
        self.stop()
        self.turns, self.stats = [], []
