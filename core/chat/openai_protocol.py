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
from dataclasses import dataclass, field, replace
from itertools import accumulate
from typing import Any

from core.chat.prompting import Turn
from core.chat.sampling import SETTING_RANGES, SamplingSettings
from core.chat.stream import ReplyChunk
from core.chat.token_view import TOP_K, TokenStep
from core.chat.types import FinishReason
from core.common.errors import InputError

MAX_STOP_STRINGS = 4
ROLES = ("system", "user", "assistant")
MAX_PROMPTS = 64  # prompts in one /v1/completions request
MAX_LOGPROBS = 20  # /v1/completions `logprobs`: alternatives per token (above TOP_K they come from a scoring pass)
PromptInput = str | tuple[int, ...]  # a text, or token ids


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
    # chat: the conversation as (system prompt, earlier turns, the last user message); completions: the prompts
    system: str = ""
    turns: tuple[Turn, ...] = ()
    message: str = ""
    prompts: tuple[PromptInput, ...] = ()
    echo: bool = False  # completions: return the prompt (and its tokens' logprobs) before the completion
    max_tokens: int = 16  # completions: 0 scores the prompt only
    add_special_tokens: bool = True  # completions, text prompts (vLLM's extension)
    max_tokens_given: bool = field(default=False, compare=False)

    @property
    def scored(self) -> bool:
        """Answered by a scoring pass over the prompt (and what was generated) rather than from the decode steps."""
        return self.echo or self.max_tokens == 0 or self.top_logprobs > TOP_K


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
    max_tokens = _number(body, limit_name, None if chat else 16, 1 if chat else 0, max_new_tokens, integer=True)
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
    return _completion_request(body, model, settings, max_tokens)


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _prompts(value: Any) -> tuple[PromptInput, ...]:
    """A string, a list of strings, a list of token ids, or a list of lists of token ids."""
    if isinstance(value, str) or isinstance(value, list) and value and all(map(_is_token, value)):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ApiError(400, "'prompt' must be a string, a list of strings, a list of token ids or a list of lists of "
                            "token ids.", "prompt")
    if len(value) > MAX_PROMPTS:
        raise ApiError(400, f"'prompt' holds {len(value)} prompts; send at most {MAX_PROMPTS} per request.", "prompt")
    prompts: list[PromptInput] = []
    for n, prompt in enumerate(value):
        if isinstance(prompt, str) and prompt:
            prompts.append(prompt)
        elif isinstance(prompt, list) and prompt and all(map(_is_token, prompt)):
            prompts.append(tuple(prompt))
        else:
            raise ApiError(400, f"prompt[{n}] must be a non-empty string or a non-empty list of token ids "
                                "(whole numbers from 0).", "prompt")
    return tuple(prompts)


def _completion_request(body: dict, model: str, settings: SamplingSettings, max_tokens: int) -> GenerationRequest:
    logprobs = _number(body, "logprobs", None, 0, MAX_LOGPROBS, integer=True)
    flags = {name: body.get(name, default) for name, default in (("echo", False), ("stream", False),
                                                                  ("add_special_tokens", True))}
    for name, value in flags.items():
        if value is not None and not isinstance(value, bool):
            raise ApiError(400, f"'{name}' must be true or false; got {value!r}.", name)
    request = GenerationRequest(model, replace(settings, max_new_tokens=max(1, max_tokens)), bool(flags["stream"]),
                                logprobs is not None, logprobs or 0, _stop(body), prompts=_prompts(body.get("prompt")),
                                echo=bool(flags["echo"]), max_tokens=max_tokens,
                                add_special_tokens=flags["add_special_tokens"] is not False, max_tokens_given=True)
    if request.stream and (request.scored or len(request.prompts) > 1):
        raise ApiError(400, f"'stream' works for one prompt with max_tokens of at least 1, no echo and logprobs up to "
                            f"{TOP_K}; send this request with stream false.", "stream")
    return request


def check_vocabulary(ids, vocabulary: int, where: str, param: str) -> None:
    bad = next((t for t in ids if t >= vocabulary), None)
    if bad is not None:
        raise ApiError(400, f"{where} has token id {bad}, outside this model's vocabulary of {vocabulary:,}.", param)


def prompt_ids(tokenizer, prompt: PromptInput, add_special_tokens: bool, vocabulary: int, n: int) -> list[int]:
    """A prompt's token ids: a text tokenized as it is, token ids checked against the model's vocabulary."""
    if isinstance(prompt, str):
        return tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
    check_vocabulary(prompt, vocabulary, f"prompt[{n}]", "prompt")
    return list(prompt)


# ---- /tokenize, /detokenize, /tokenizer_info (vLLM's shapes) ----------------------------------------------------------
def tokenize_answer(tokenizer, body: dict, context: int | None) -> dict:
    """Token ids of a prompt, or of chat messages rendered with the model's chat template."""
    if body.get("messages") is not None:
        messages = body["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) and m.get("role") in ROLES for m in messages):
            raise ApiError(400, "'messages' must be a list of {role, content} objects.", "messages")
        if not getattr(tokenizer, "chat_template", None):
            raise ApiError(400, "This model has no chat template; send 'prompt' instead of 'messages'.", "messages")
        text = tokenizer.apply_chat_template(
            [{"role": m["role"], "content": _text_of(m.get("content", ""), f"messages[{n}]")}
             for n, m in enumerate(messages)], tokenize=False,
            add_generation_prompt=bool(body.get("add_generation_prompt", True)),
            continue_final_message=bool(body.get("continue_final_message", False)))
        special = bool(body.get("add_special_tokens", False))
    else:
        text = body.get("prompt")
        if not isinstance(text, str):
            raise ApiError(400, "'prompt' must be a string (or send 'messages').", "prompt")
        special = body.get("add_special_tokens", True) is not False
    ids = tokenizer(text, add_special_tokens=special)["input_ids"]
    strings = tokenizer.convert_ids_to_tokens(ids) if body.get("return_token_strs") else None
    return {"count": len(ids), "max_model_len": context, "tokens": ids, "token_strs": strings}


def detokenize_answer(tokenizer, body: dict) -> dict:
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(map(_is_token, tokens)):
        raise ApiError(400, "'tokens' must be a list of token ids (whole numbers from 0).", "tokens")
    check_vocabulary(tokens, len(tokenizer), "'tokens'", "tokens")
    return {"prompt": tokenizer.decode(tokens)}


def tokenizer_info(tokenizer) -> dict:
    """What lm-evaluation-harness's remote tokenizer reads: the special tokens and the chat template."""
    return {"tokenizer_class": type(tokenizer).__name__, "eos_token": tokenizer.eos_token,
            "bos_token": tokenizer.bos_token, "pad_token": tokenizer.pad_token, "unk_token": tokenizer.unk_token,
            "chat_template": getattr(tokenizer, "chat_template", None), "vocab_size": len(tokenizer)}


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


def legacy_logprobs(pieces: list[str], token_logprobs: list[float | None], top_logprobs: list[dict | None],
                    offset: int = 0) -> dict:
    """The legacy completions shape: tokens, token_logprobs, top_logprobs (text -> logprob), text_offset."""
    offsets = list(accumulate((len(p) for p in pieces[:-1]), initial=offset)) if pieces else []
    return {"tokens": pieces, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": offsets}


def _top_dict(tokenizer, ids, logprobs) -> dict[str, float]:
    """Alternatives keyed by their text; two ids with the same text keep the likelier (dicts cannot hold both)."""
    top: dict[str, float] = {}
    for token_id, logprob in zip(ids, logprobs):
        text = _piece(tokenizer, int(token_id))[0]
        top[text] = max(top.get(text, -math.inf), float(logprob))
    return top


def completion_logprobs(tokenizer, steps: list[TokenStep], top: int, offset: int = 0) -> dict:
    """Legacy logprobs of generated tokens, from the engine's decode steps."""
    return legacy_logprobs([_piece(tokenizer, s.token_id)[0] for s in steps], [_logprob(s.prob) for s in steps],
                           [_top_dict(tokenizer, s.alt_ids[:top], map(_logprob, s.alt_probs[:top])) for s in steps],
                           offset)


def token_pieces(tokenizer, ids: list[int]) -> list[str]:
    """The text each token adds to the decoded sequence, read with the token before it (SentencePiece drops a
    word's leading space when a token is decoded alone)."""
    pieces = [tokenizer.decode(ids[:1])] if ids else []
    for before, token in zip(ids, ids[1:]):
        alone, pair = tokenizer.decode([before]), tokenizer.decode([before, token])
        pieces.append(pair[len(alone):] if pair.startswith(alone) else tokenizer.decode([token]))
    return pieces


def scored_logprobs(tokenizer, ids: list[int], scores, first: int, top: int) -> dict:
    """Legacy logprobs of ids[first:] from a scoring pass over ids (`scores` covers ids[1:]; the first token of a
    sequence has no log-probability, so it is null, as OpenAI's echo has it)."""
    pieces = token_pieces(tokenizer, ids)
    token_logprobs: list[float | None] = [None] + [float(v) for v in scores.logprobs] if scores else [None]
    tops: list[dict | None] = [None] + [_top_dict(tokenizer, i[:top], v[:top]) for i, v in
                                        zip(scores.top_ids, scores.top_logprobs)] if scores else [None]
    return legacy_logprobs(pieces[first:], token_logprobs[first:], tops[first:])


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

    def answers(self, answers: list, prompt_texts: list[str]) -> dict:
        """A completions body with one choice per prompt (core.evaluate.completions.Answer), echoed when asked."""
        choices, top = [], self.request.top_logprobs
        for n, (answer, prompt_text) in enumerate(zip(answers, prompt_texts)):
            logprobs = None
            if self.request.logprobs:
                logprobs = (completion_logprobs(self.tokenizer, list(answer.steps), top) if answer.steps else
                            scored_logprobs(self.tokenizer, answer.ids, answer.scores,
                                            0 if self.request.echo else answer.prompt_tokens, top))
            choices.append({"index": n, "text": (prompt_text if self.request.echo else "") + answer.text,
                            "logprobs": logprobs, "finish_reason": answer.finish})
        prompt = sum(a.prompt_tokens for a in answers)
        completion = sum(a.completion_tokens for a in answers)
        return self._envelope("text_completion", choices) | {"usage": {
            "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}

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
