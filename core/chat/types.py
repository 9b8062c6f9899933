"""The engine's vocabulary: what a request is, where it is in its life, why it ended, and what one step produced.

Shaped like vLLM's v1 engine (`RequestStatus`, `SchedulerOutput`, `EngineCoreOutput`): the scheduler plans a step,
the backend runs it, the sampler picks tokens and the scheduler turns them into one `StepOutput` per request. These
are numbers and enums only; the UI and the OpenAI protocol put them into words (ui/chat_view.py,
core/chat/openai_protocol.py).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Hashable

from core.chat.token_view import TokenStep

RequestId = Hashable


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # in line: its prompt is not read yet
    PREFILLING = "prefilling"  # its prompt is being read, chunk by chunk
    RUNNING = "running"  # decoding, one token per step
    FINISHED = "finished"


class FinishReason(enum.Enum):
    END_OF_TEXT = "end_of_text"  # the model wrote its end-of-text token
    LENGTH = "length"  # the request's token limit (or the model's context) was reached
    STOP_STRING = "stop_string"  # a stop string appeared (for a base model's transcript: the next turn began)
    STOPPED = "stopped"  # its owner pressed Stop, or started something that replaces it
    DISCONNECTED = "disconnected"  # its reader went away (a closed page, a dropped API client)
    FAILED = "failed"  # an error; StepOutput.error says which

    @property
    def ok(self) -> bool:
        return self is not FinishReason.FAILED


@dataclass
class ReplyStats:
    """Numbers about one reply (the UI and the transcript put them into words)."""

    tokens: int = 0
    seconds: float = 0.0
    first_token_s: float | None = None  # from the request to its first token: waiting in line and reading included
    decode_tokens_per_s: float | None = None  # tokens after the first, per second
    seed: int | None = None
    finish: FinishReason | None = None  # None while the reply is still streaming
    batch: int = 0  # most requests decoding together while this one ran


@dataclass(frozen=True)
class WaitingInfo:
    """Where a request stands in line: its place (1 = next), an estimated wait and how many replies are running."""

    place: int
    wait_s: float
    running: int


@dataclass(frozen=True)
class PrefillChunk:
    """Read prompt tokens [start, end) of one request in this step; `last` when that completes its prompt."""

    request_id: RequestId
    start: int
    end: int

    @property
    def tokens(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class StepPlan:
    """What one engine step runs (vLLM's SchedulerOutput): a decode token for each running request and prompt chunks
    for requests being read, within the step's token budget."""

    decode: tuple[RequestId, ...] = ()
    prefill: tuple[PrefillChunk, ...] = ()

    @property
    def tokens(self) -> int:
        return len(self.decode) + sum(c.tokens for c in self.prefill)

    def __bool__(self) -> bool:
        return bool(self.decode or self.prefill)


@dataclass(frozen=True)
class Sampled:
    """The token chosen for one row, with what the model believed (softmax of its raw logits)."""

    token: int
    prob: float
    alt_ids: tuple[int, ...]
    alt_probs: tuple[float, ...]

    def step(self) -> TokenStep:
        return TokenStep(self.token, self.prob, self.alt_ids, self.alt_probs)


@dataclass
class StepOutput:
    """What one step did for one request: its new token (if any), the new text, and how it ended (if it did)."""

    request_id: RequestId
    token_ids: list[int] = field(default_factory=list)
    text: str = ""  # newly decoded text, safe to show (a possible stop string's start is held back)
    steps: list[TokenStep] = field(default_factory=list)
    finish: FinishReason | None = None
    error: str = ""
    final_text: str | None = None  # with `finish`: the whole reply, cut at a stop string
    stats: ReplyStats | None = None  # a snapshot after this step
