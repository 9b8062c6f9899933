"""Which requests run in the next step, and what a step's sampled tokens mean for each of them.

Like vLLM's v1 scheduler: `schedule()` plans one step within a token budget (a decode token for every running
request, then chunks of waiting prompts, first come first served, while the batch has room), and `update()` turns
the step's sampled tokens into one StepOutput per request, ending those that are done. A wave of new users is
therefore read a budget's worth per step while the running replies keep getting a token every step. The stop
checks are plain functions. No model here: the scheduler is tested with a fake backend.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable

from core.chat.sampler import RowSampler
from core.chat.sampling import SamplingSettings
from core.chat.types import (
    FinishReason,
    UserAction,
    PrefillChunk,
    ReplyStats,
    RequestId,
    RequestStatus,
    Sampled,
    StepOutput,
    StepPlan,
)
from core.common.errors import BusyError
from core.common.stopping import StopFlag

DEFAULT_TOKEN_BUDGET = 512  # tokens one step may run; how it was chosen: README, "How the chat engine works"
MIN_PREFILL_TOKENS = 16  # prompt tokens a step reads at least while there is room, however many replies run
DISCONNECTED = "the client went away"  # the StopFlag reason of a reader that left


class Detokenizer:
    """Text from token ids one at a time, without decoding the whole reply again (tokenizers' DecodeStream for fast
    tokenizers; otherwise the prefix/read offsets of vLLM's incremental detokenizer)."""

    def __init__(self, tokenizer):
        from tokenizers.decoders import DecodeStream

        self.tokenizer, self.ids = tokenizer, []
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        self.stream = DecodeStream(skip_special_tokens=True) if self.backend is not None else None
        self.prefix = self.read = 0

    def whole(self, ids: list[int]) -> str:
        """All of `ids` at once, once a reply ends: bytes that never formed a character show as U+FFFD there, as
        `tokenizer.decode` writes them (the stream holds them back while they still could)."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def step(self, token: int) -> str:
        if self.stream is not None:
            return self.stream.step(self.backend, token) or ""
        self.ids.append(token)
        before, now = self.whole(self.ids[self.prefix:self.read]), self.whole(self.ids[self.prefix:])
        if now.endswith("\ufffd") or len(now) <= len(before):  # half a character, or nothing new yet
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return now[len(before):]


@dataclass
class RequestState:
    """One request inside the engine (vLLM's `Request`): its prompt, settings, progress and reply so far."""

    request_id: RequestId
    prompt_ids: list[int]
    settings: SamplingSettings
    max_new: int
    stop: StopFlag
    detokenizer: Detokenizer
    stop_strings: tuple[str, ...] = ()
    record_steps: bool = True
    status: RequestStatus = RequestStatus.WAITING
    computed: int = 0  # prompt tokens read so far
    generated: list[int] = field(default_factory=list)
    text: str = ""  # decoded so far
    released: int = 0  # characters of `text` already handed to the reader
    submitted: float = field(default_factory=time.perf_counter)
    first_at: float | None = None
    stats: ReplyStats = field(default_factory=ReplyStats)

    def __post_init__(self) -> None:
        self.sampler = RowSampler(self.settings, self.prompt_ids)
        self.stats.seed = self.sampler.seed

    @property
    def last_token(self) -> int:
        return self.generated[-1]

    @property
    def finished(self) -> bool:
        return self.status is RequestStatus.FINISHED


# ---- stop checks ---------------------------------------------------------------------------------------------------
def aborted(state: RequestState) -> FinishReason | None:
    """Why the request's owner ended it, if they did: Stop, a reader gone, or another action of theirs."""
    if not state.stop.stopped:
        return None
    if state.stop.reason == DISCONNECTED:
        return FinishReason.DISCONNECTED
    if state.stop.reason in {a.value for a in UserAction}:
        state.stats.ended_by = UserAction(state.stop.reason)
        return FinishReason.REPLACED
    return FinishReason.STOPPED


def stop_string_at(text: str, stops: tuple[str, ...], since: int) -> int | None:
    """Where the first stop string begins in `text`, looking only at what could contain new text from `since` on."""
    start = max(0, since - max(map(len, stops), default=0))
    hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(hits) if hits else None


def after_token(state: RequestState, since: int) -> FinishReason | None:
    """Why the request ends now that its last token is in (None: it goes on)."""
    if state.stop_strings and stop_string_at(state.text, state.stop_strings, since) is not None:
        return FinishReason.STOP_STRING
    if len(state.generated) >= state.max_new:
        return FinishReason.LENGTH
    return aborted(state)


class Scheduler:
    """The waiting line and the running batch of one engine."""

    def __init__(self, max_batch: Callable[[], int], eos_ids: set[int], token_budget: int = DEFAULT_TOKEN_BUDGET,
                 max_waiting: int = 64):
        self.max_batch, self.eos_ids = max_batch, eos_ids
        self.token_budget, self.max_waiting = token_budget, max_waiting
        self.waiting: deque[RequestState] = deque()  # first come, first served; the head may be part-read
        self.running: dict[RequestId, RequestState] = {}
        self.states: dict[RequestId, RequestState] = {}  # every request in flight

    # ---- in and out --------------------------------------------------------------------------------------------
    def add(self, state: RequestState) -> None:
        if len(self.waiting) >= self.max_waiting:
            raise BusyError(f"The chat queue is full ({len(self.waiting)} requests waiting); try again in a moment.")
        self.waiting.append(state)
        self.states[state.request_id] = state

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def in_flight(self) -> list[RequestState]:
        return list(self.running.values()) + list(self.waiting)

    def place(self, request_id: RequestId) -> int | None:
        """1 = next in line; None when the request is not waiting (being read, running or done)."""
        unread = [s for s in self.waiting if s.status is RequestStatus.WAITING]
        return next((n for n, s in enumerate(unread, 1) if s.request_id == request_id), None)

    def drop_stopped(self) -> list[StepOutput]:
        """End the requests whose owner stopped them or went away, wherever they are."""
        outputs = []
        for state in self.in_flight():
            reason = aborted(state)
            if reason is not None:
                outputs.append(self.finish(state, reason))
        return outputs

    def finish(self, state: RequestState, reason: FinishReason, error: str = "") -> StepOutput:
        """End a request: it leaves the line or the batch, and its reader gets the final text and stats."""
        self.running.pop(state.request_id, None)
        self.states.pop(state.request_id, None)
        if state in self.waiting:
            self.waiting.remove(state)
        state.status = RequestStatus.FINISHED
        now = time.perf_counter()
        state.stats.finish, state.stats.seconds, state.stats.tokens = reason, now - state.submitted, len(state.generated)
        if state.first_at is not None and len(state.generated) > 1:
            state.stats.decode_tokens_per_s = (len(state.generated) - 1) / max(now - state.first_at, 1e-9)
        final = state.detokenizer.whole(state.generated)
        if reason is FinishReason.STOP_STRING:
            final = final[:stop_string_at(final, state.stop_strings, 0)].rstrip()
        return StepOutput(state.request_id, text=final[state.released:], finish=reason, error=error, final_text=final,
                          stats=replace(state.stats))

    # ---- one step ----------------------------------------------------------------------------------------------
    def schedule(self) -> StepPlan:
        """A decode token for every running request, then prompt chunks first come first served, within the budget."""
        decode = tuple(self.running)
        budget = max(self.token_budget - len(decode), MIN_PREFILL_TOKENS)
        room = self.max_batch() - len(self.running)
        chunks = []
        for state in self.waiting:
            if budget <= 0 or room <= 0:
                break
            take = min(budget, len(state.prompt_ids) - state.computed)
            chunks.append(PrefillChunk(state.request_id, state.computed, state.computed + take))
            state.status = RequestStatus.PREFILLING
            budget, room = budget - take, room - 1
        return StepPlan(decode, tuple(chunks))

    def update(self, plan: StepPlan, sampled: dict[RequestId, Sampled], batch: int) -> list[StepOutput]:
        """Apply a step: prompt chunks read, sampled tokens appended, finished requests ended."""
        for chunk in plan.prefill:
            state = self.states.get(chunk.request_id)
            if state is None:  # it failed while its prompt was read
                continue
            state.computed = chunk.end
            if chunk.end == len(state.prompt_ids):  # read in full: it runs from now on
                self.waiting.remove(state)
                state.status = RequestStatus.RUNNING
                self.running[state.request_id] = state
        return [self._accept(self.running[key], token, batch) for key, token in sampled.items()
                if key in self.running]

    def _accept(self, state: RequestState, sampled: Sampled, batch: int) -> StepOutput:
        now = time.perf_counter()
        if state.first_at is None:
            state.first_at, state.stats.first_token_s = now, now - state.submitted
        state.stats.batch = max(state.stats.batch, batch)
        if sampled.token in self.eos_ids:
            return self.finish(state, FinishReason.END_OF_TEXT)
        since = len(state.text)
        state.generated.append(sampled.token)
        state.text += state.detokenizer.step(sampled.token)
        steps = [sampled.step()] if state.record_steps else []
        reason = after_token(state, since)
        if reason is not None:
            output = self.finish(state, reason)
            output.token_ids, output.steps = [sampled.token], steps
            return output
        # text a stop string could still begin in is held back: a stream cannot take text back
        hold = max(map(len, state.stop_strings), default=1) - 1
        safe = max(state.released, len(state.text) - hold)
        output = StepOutput(state.request_id, [sampled.token], state.text[state.released:safe], steps,
                            stats=replace(state.stats, tokens=len(state.generated)))
        state.released = safe
        return output

