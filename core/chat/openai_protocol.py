"""The OpenAI chat and completions API as plain Python: requests checked into typed values, engine replies turned
into the JSON shapes OpenAI's clients expect, and errors in OpenAI's error shape with the right status.

The web layer (api/openai_server.py) only moves these between HTTP and the engine, so everything here is testable
without a server. Log probabilities are the served model's own (softmax of its raw logits at each step, before
temperature or top-p reshape them), the same numbers as the Chat tab's token view.
"""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from core.chat.prompting import Turn
from core.chat.sampling import SETTING_RANGES, SamplingSettings
from core.chat.stream import ReplyChunk
from core.chat.token_view import TOP_K, TokenStep
from core.chat.types import FinishReason
from core.common.errors import InputError

MAX_STOP_STRINGS = 4
ROLES = ("system", "user", "assistant")


@dataclass
class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}} with `status`."""

    status: int
    message: str
    param: str | None = None
    type: str = "invalid_request_error"
    code: str | None = None

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class GenerationRequest:
    """One chat or completion request, checked."""

    model: str
    settings: SamplingSettings
    stream: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    stop: tuple[str, ...] = ()
    # chat: the conversation as (system prompt, earlier turns, the last user message); completions: the prompt
    system: str = ""
    turns: tuple[Turn, ...] = ()
    message: str = ""
    prompt: str | None = None
    max_tokens_given: bool = field(default=False, compare=False)


def _number(body: dict, name: str, default, low: float, high: float, integer: bool = False):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and value != int(value)):
        raise ApiError(400, f"'{name}' must be a {'whole ' if integer else ''}number; got {value!r}.", name)
    if not low <= value <= high:
        raise ApiError(400, f"'{name}' must be between {low:g} and {high:g}; got {value:g}.", name)
    return int(value) if integer else float(value)


def _text_of(content: Any, where: str) -> str:
    """Message content as text: a string, or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise ApiError(400, f"{where}: content must be a string or a list of text parts (images and audio are not "
                        "supported by these models).", "messages")


def conversation(messages: Any) -> tuple[str, tuple[Turn, ...], str]:
    """OpenAI messages as (system prompt, earlier user/assistant turns, the last user message)."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects.", "messages")
    system, merged = [], []
    for n, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ApiError(400, f"messages[{n}]: role must be one of {', '.join(ROLES)}.", "messages")
        text = _text_of(message.get("content", ""), f"messages[{n}]")
        if message["role"] == "system":
            system.append(text)
        elif merged and merged[-1][0] == message["role"]:  # two in a row from one side read as one message
            merged[-1] = (message["role"], f"{merged[-1][1]}\n\n{text}")
        else:
            merged.append((message["role"], text))
    if not merged or merged[-1][0] != "user":
        raise ApiError(400, "The last message must come from the user.", "messages")
    if merged[0][0] == "assistant":
        merged.insert(0, ("user", ""))
    pairs = merged[:-1]
    turns = tuple(Turn(pairs[i][1], pairs[i + 1][1]) for i in range(0, len(pairs), 2))
    return "\n\n".join(system), turns, merged[-1][1]


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if (not isinstance(stops, list) or len(stops) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and s for s in stops)):
        raise ApiError(400, f"'stop' must be a string or a list of up to {MAX_STOP_STRINGS} non-empty strings.", "stop")
    return tuple(stops)


def parse_request(body: Any, chat: bool, max_new_tokens: int) -> GenerationRequest:
    """Check a /v1/chat/completions (chat=True) or /v1/completions body; `max_new_tokens` is the server's cap."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ApiError(400, "'model' is required: one of the ids that GET /v1/models lists.", "model")
    if _number(body, "n", 1, 1, 1, integer=True) != 1:
        raise ApiError(400, "'n' must be 1.", "n")
    for name in ("frequency_penalty", "presence_penalty"):
        if _number(body, name, 0, -2, 2) != 0:
            raise ApiError(400, f"'{name}' is not supported; use 'repetition_penalty' (1 = off).", name)
    limit_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, limit_name, None if chat else 16, 1, max_new_tokens, integer=True)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, f"'seed' must be an integer; got {seed!r}.", "seed")
    ranges = {name: (low, high) for name, _label, low, high, _int in SETTING_RANGES}
    try:
        settings = SamplingSettings(
            temperature=_number(body, "temperature", 1.0, 0, 2),
            top_k=_number(body, "top_k", 0, 0, ranges["top_k"][1], integer=True),
            top_p=_number(body, "top_p", 1.0, 0.0, 1.0) or 1e-6,
            min_p=_number(body, "min_p", 0.0, 0, 1),
            repetition_penalty=_number(body, "repetition_penalty", 1.0, *ranges["repetition_penalty"]),
            max_new_tokens=max_tokens or max_new_tokens, seed=seed)
    except InputError as err:
        raise ApiError(400, str(err), "seed" if "Seed" in str(err) else None) from None
    top_logprobs = _number(body, "top_logprobs", 0, 0, TOP_K, integer=True)
    logprobs = body.get("logprobs")
    if chat:
        if logprobs is not None and not isinstance(logprobs, bool):
            raise ApiError(400, "'logprobs' must be true or false for chat completions.", "logprobs")
        if top_logprobs and not logprobs:
            raise ApiError(400, "'top_logprobs' needs 'logprobs': true.", "top_logprobs")
        system, turns, message = conversation(body.get("messages"))
        return GenerationRequest(model, settings, bool(body.get("stream")), bool(logprobs), top_logprobs,
                                 _stop(body), system, turns, message, max_tokens_given=max_tokens is not None)
    logprobs = _number(body, "logprobs", None, 0, TOP_K, integer=True)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "'prompt' must be a non-empty string (one prompt per request).", "prompt")
    if body.get("echo"):
        raise ApiError(400, "'echo' is not supported.", "echo")
    return GenerationRequest(model, settings, bool(body.get("stream")), logprobs is not None, logprobs or 0,
                             _stop(body), prompt=prompt, max_tokens_given=True)


# ---- responses -----------------------------------------------------------------------------------------------------
def finish_reason(chunk: ReplyChunk) -> str:
    """OpenAI's words: "length" when the token limit ended the reply, else "stop"."""
    return "length" if chunk.stats.finish is FinishReason.LENGTH else "stop"


def _logprob(p: float) -> float:
    return math.log(p) if p > 0 else -9999.0


def _piece(tokenizer, token_id: int) -> tuple[str, list[int]]:
    text = tokenizer.decode([token_id])
    return text, list(text.encode("utf-8"))


def chat_logprobs(tokenizer, steps: list[TokenStep], top: int) -> dict:
    """{"content": [...]} with each token's logprob and its `top` alternatives."""
    content = []
    for step in steps:
        text, raw = _piece(tokenizer, step.token_id)
        alternatives = []
        for alt_id, prob in list(zip(step.alt_ids, step.alt_probs))[:top]:
            alt, alt_raw = _piece(tokenizer, alt_id)
            alternatives.append({"token": alt, "logprob": _logprob(prob), "bytes": alt_raw})
        content.append({"token": text, "logprob": _logprob(step.prob), "bytes": raw, "top_logprobs": alternatives})
    return {"content": content}


def completion_logprobs(tokenizer, steps: list[TokenStep], top: int, offset: int = 0) -> dict:
    """The legacy completions shape: tokens, token_logprobs, top_logprobs (dicts), text_offset."""
    tokens, logprobs, tops, offsets = [], [], [], []
    for step in steps:
        text, _ = _piece(tokenizer, step.token_id)
        offsets.append(offset)
        offset += len(text)
        tokens.append(text)
        logprobs.append(_logprob(step.prob))
        tops.append({_piece(tokenizer, i)[0]: _logprob(p) for i, p in list(zip(step.alt_ids, step.alt_probs))[:top]})
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets}


@dataclass
class ResponseWriter:
    """Builds one request's response objects (whole, or streamed chunk by chunk) with a stable id and time."""

    request: GenerationRequest
    tokenizer: Any
    prompt_tokens: int
    chat: bool
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))
    sent_text: int = 0
    sent_steps: int = 0

    @property
    def _prefix(self) -> str:
        return "chatcmpl-" if self.chat else "cmpl-"

    def _envelope(self, kind: str, choices: list[dict]) -> dict:
        return {"id": self._prefix + self.id, "object": kind, "created": self.created, "model": self.request.model,
                "choices": choices}

    def _logprobs(self, steps: list[TokenStep], offset: int = 0) -> dict | None:
        if not self.request.logprobs:
            return None
        if self.chat:
            return chat_logprobs(self.tokenizer, steps, self.request.top_logprobs)
        return completion_logprobs(self.tokenizer, steps, self.request.top_logprobs, offset)

    def usage(self, chunk: ReplyChunk) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": chunk.stats.tokens,
                "total_tokens": self.prompt_tokens + chunk.stats.tokens}

    def whole(self, chunk: ReplyChunk) -> dict:
        choice: dict[str, Any] = {"index": 0, "logprobs": self._logprobs(chunk.steps), "finish_reason": finish_reason(chunk)}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": chunk.text}
        else:
            choice["text"] = chunk.text
        body = self._envelope("chat.completion" if self.chat else "text_completion", [choice])
        return body | {"usage": self.usage(chunk)}

    def opening(self) -> dict:
        """The first streamed chat chunk: the assistant's role, no text yet."""
        return self._envelope("chat.completion.chunk", [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                         "logprobs": None, "finish_reason": None}])

    def delta(self, chunk: ReplyChunk) -> dict | None:
        """The next streamed chunk: the text and token logprobs not sent yet, or None when there is nothing new.

        With stop strings, the end of the text is held back while it could still turn into one (a stream
        cannot take text back), and the logprobs come with the last chunk."""
        text, steps = chunk.text, chunk.steps
        if not chunk.done and self.request.stop:
            text, steps = text[:max(self.sent_text, len(text) - max(map(len, self.request.stop)) + 1)], []
        new_text, new_steps = text[self.sent_text:], steps[self.sent_steps:]
        if not (new_text or new_steps or chunk.done):
            return None
        choice: dict[str, Any] = {"index": 0, "logprobs": self._logprobs(new_steps, self.sent_text),
                                  "finish_reason": finish_reason(chunk) if chunk.done else None}
        if self.chat:
            choice["delta"] = {"content": new_text}
        else:
            choice["text"] = new_text
        self.sent_text += len(new_text)
        self.sent_steps += len(new_steps)
        return self._envelope("chat.completion.chunk" if self.chat else "text_completion", [choice])
