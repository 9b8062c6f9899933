"""Chat with a model on another server that speaks the OpenAI API (vLLM, TGI, llama.cpp's server, Ollama, or another
LLM Playground): the way up when a class or a lab outgrows one machine.

Replies stream over server-sent events and arrive as the same ReplyChunks as local ones; the token view is filled
from the server's log probabilities when it returns them. Only http(s) URLs are accepted, the key is sent only to
that server and never logged, and a server that is down or answers something else gets a message that says so.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from typing import Iterator
from urllib.parse import urlparse

import httpx

from core.chat.prompting import Turn
from core.chat.sampling import SamplingSettings
from core.chat.stream import ReplyChunk
from core.chat.token_view import TOP_K, TokenChoice, TokenInfo
from core.chat.types import FinishReason, ReplyStats
from core.common.errors import InputError, PlaygroundError
from core.common.stopping import StopFlag

CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 5.0, 120.0
FINISH = {"stop": FinishReason.END_OF_TEXT, "length": FinishReason.LENGTH}  # OpenAI finish_reason -> ours


class RemoteError(PlaygroundError):
    """The remote server could not be used; the message says why (never with the key in it)."""


@dataclass(frozen=True)
class RemoteServer:
    base_url: str  # ends in /v1
    model: str
    api_key: str = field(default="", repr=False)

    @classmethod
    def checked(cls, base_url: str, model: str, api_key: str = "") -> RemoteServer:
        url = (base_url or "").strip().rstrip("/")
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InputError("The server address must be an http:// or https:// URL, e.g. http://localhost:8000/v1.")
        if not (model or "").strip():
            raise InputError("Give the model name the server knows (GET <url>/models lists them).")
        return cls(url if url.endswith("/v1") else url + "/v1", model.strip(), (api_key or "").strip())

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def describe(self) -> str:
        return f"{self.model} at {self.base_url}"


def _fail(server: RemoteServer, err: Exception | str) -> RemoteError:
    text = str(err).replace(server.api_key, "***") if server.api_key else str(err)
    return RemoteError(f"The server at {server.base_url} could not be used: {text}")


def _error_message(response: httpx.Response) -> str:
    """The server's own words: OpenAI's {"error": {"message"}}, or FastAPI's {"detail"} (transformers serve)."""
    try:
        body = response.json()
        return body["error"]["message"] if "error" in body else str(body["detail"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


def _status(response: httpx.Response) -> str:
    message = _error_message(response)
    return message if message.startswith("HTTP ") else f"HTTP {response.status_code} ({message})"


def _timeout() -> httpx.Timeout:
    return httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)


@dataclass(frozen=True)
class ServerCheck:
    """What connecting found: the models the server lists (maybe none) and, in words, how the model was confirmed."""

    listed: tuple[str, ...]
    found: str


def _listing(server: RemoteServer) -> tuple[tuple[str, ...], str | None]:
    """(models GET /models lists, what is wrong with that answer or None); a server that does not answer at all is a
    RemoteError. The listing is advisory: some servers list only part of what they serve (transformers serve lists
    hub-cache models only, and answers HTTP 500 without a hub cache)."""
    try:
        response = httpx.get(f"{server.base_url}/models", headers=server.headers, timeout=_timeout())
    except httpx.HTTPError as err:
        raise _fail(server, f"no answer ({type(err).__name__}). Is it running, and is the address right?") from None
    if response.status_code != 200:
        return (), f"GET /models answered {_status(response)}"
    try:
        models = tuple(m["id"] for m in response.json()["data"])
    except (ValueError, KeyError, TypeError):
        return (), "GET /models did not answer in the OpenAI format"
    if server.model not in models:
        return models, f"GET /models does not list '{server.model}' (it lists {', '.join(models[:8]) or 'none'})"
    return models, None


def _one_token_reply(server: RemoteServer) -> None:
    """A 1-token chat completion: whether the server really answers for the model."""
    body = {"model": server.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "stream": False}
    try:
        response = httpx.post(f"{server.base_url}/chat/completions", json=body, headers=server.headers,
                              timeout=_timeout())
    except httpx.HTTPError as err:
        raise RemoteError(f"no answer ({type(err).__name__})") from None
    if response.status_code != 200:
        raise RemoteError(_status(response))
    try:
        response.json()["choices"][0]
    except (ValueError, KeyError, TypeError, IndexError):
        raise RemoteError("its answer is not the OpenAI format") from None


def check_server(server: RemoteServer) -> ServerCheck:
    """Whether the server serves the model: GET /models when it lists it, else one 1-token chat completion decides.
    A RemoteError says what was found when neither does."""
    listed, problem = _listing(server)
    if problem is None:
        return ServerCheck(listed, f"the server lists {server.model}")
    try:
        _one_token_reply(server)
    except RemoteError as err:
        raise _fail(server, f"{problem}, and a 1-token chat completion with '{server.model}' failed: {err}") from None
    return ServerCheck(listed, f"{problem}, but a 1-token chat completion with '{server.model}' was answered, so it "
                               "serves it")


def _token(entry: dict) -> TokenInfo:
    alternatives = tuple(TokenChoice(a["token"], math.exp(a["logprob"])) for a in entry.get("top_logprobs") or [])
    return TokenInfo(entry["token"], math.exp(entry["logprob"]), alternatives[:TOP_K])


def messages_for(system: str | None, turns: list[Turn], message: str) -> list[dict]:
    """OpenAI messages; `system` None sends an empty system message (the server's template writes no default)."""
    history = [m for t in turns for m in ({"role": "user", "content": t.user}, {"role": "assistant", "content": t.reply})]
    opening = [{"role": "system", "content": system or ""}] if system is None or system.strip() else []
    return opening + history + [{"role": "user", "content": message}]


def remote_reply(server: RemoteServer, messages: list[dict], settings: SamplingSettings,
                 stop: StopFlag) -> Iterator[tuple[ReplyChunk, list[TokenInfo]]]:
    """Stream a reply from the server: (chunk so far, token infos so far); Stop closes the connection."""
    body = {"model": server.model, "messages": messages, "stream": True, "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature, "top_p": settings.top_p, "logprobs": True, "top_logprobs": TOP_K}
    if settings.seed is not None and settings.seed >= 0:
        body["seed"] = settings.seed
    stats, text, tokens = ReplyStats(seed=body.get("seed")), "", []
    start = time.perf_counter()
    first_at = None
    try:
        with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body, headers=server.headers,
                          timeout=_timeout()) as response:
            if response.status_code != 200:
                response.read()
                raise _fail(server, _error_message(response))
            for line in response.iter_lines():
                if stop.stopped:
                    stats.finish = FinishReason.STOPPED
                    break
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    raise _fail(server, event["error"].get("message", "an error in the stream"))
                for choice in event.get("choices", []):
                    piece = (choice.get("delta") or {}).get("content") or ""
                    entries = ((choice.get("logprobs") or {}).get("content")) or []
                    tokens += [_token(e) for e in entries]
                    if piece and first_at is None:
                        first_at = time.perf_counter()
                        stats.first_token_s = first_at - start
                    text += piece
                    stats.tokens = len(tokens) or stats.tokens + bool(piece)
                    if choice.get("finish_reason"):
                        stats.finish = FINISH.get(choice["finish_reason"], FinishReason.END_OF_TEXT)
                stats.seconds = time.perf_counter() - start
                yield ReplyChunk(text, replace(stats)), tokens
    except httpx.HTTPError as err:
        raise _fail(server, f"the connection failed ({type(err).__name__}).") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise _fail(server, "its answer is not the OpenAI streaming format.") from None
    stats.finish = stats.finish or FinishReason.END_OF_TEXT
    now = time.perf_counter()
    stats.seconds = now - start
    if first_at is not None and stats.tokens > 1:
        stats.decode_tokens_per_s = (stats.tokens - 1) / max(now - first_at, 1e-9)
    yield ReplyChunk(text, stats, done=True), tokens
