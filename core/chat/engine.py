"""The chat engine: one per served model, batching every user's reply (continuous batching).

Each step is vLLM v1's `EngineCore.step`: the scheduler plans it (a decode token for every running request, then
chunks of waiting prompts within a token budget), the backend runs it (one decode pass over the running rows, then
the prompts, several at once when they fit), one vectorised pass samples every row with its own settings and seed,
and the scheduler turns the tokens into StepOutputs that are pushed to each request's reader. A request joins at
the next step and leaves the moment it ends, so one user's Stop never touches another's reply. A prompt that fails
to be read fails alone; anything else that breaks a step fails every request in flight with the error, the KV store
is cleared, and the engine goes on serving the next request (it never leaves a reader waiting).
"""
from __future__ import annotations

import itertools
import logging
import threading
from concurrent.futures import Future
from typing import Any, Callable

import torch

from core.chat.backends import Backend, Prefilled
from core.chat.sampler import BatchSampler
from core.chat.sampling import SamplingSettings
from core.chat.scheduler import DEFAULT_TOKEN_BUDGET, Detokenizer, RequestState, Scheduler
from core.chat.stream import RequestHandle
from core.chat.types import FinishReason, PrefillChunk, RequestId, StepOutput, StepPlan, WaitingInfo
from core.common.errors import InputError
from core.common.stopping import StopFlag

log = logging.getLogger("llm_playground")
RECENT_REPLY_S = 5.0  # the estimated wait before any reply has finished


class GenerationError(InputError):
    """The request cannot be generated (e.g. the prompt fills the whole context)."""


def _failure(err: Exception) -> str:
    return f"{type(err).__name__}: {err}"


class ChatEngine:
    """Schedules every request for one backend: a line of waiting requests and a batch of running ones."""

    def __init__(self, backend: Backend, tokenizer, eos_ids: set[int], max_waiting: int = 64,
                 token_budget: int = DEFAULT_TOKEN_BUDGET):
        self.backend, self.tokenizer = backend, tokenizer
        self.scheduler = Scheduler(lambda: self.backend.max_batch, eos_ids, token_budget, max_waiting)
        self.store = backend.new_store()
        self.sampler = BatchSampler()
        self._handles: dict[RequestId, RequestHandle] = {}
        self._partial: dict[RequestId, Prefilled] = {}  # long prompts read in part, outside the store
        self._ids = itertools.count()
        self._lock = threading.Condition()
        self._jobs: list[tuple[Callable[[Backend], Any], Future]] = []
        self._thread: threading.Thread | None = None
        self._recent_reply_s = RECENT_REPLY_S  # moving average, for the estimated wait
        self.closed = False

    @property
    def eos_ids(self) -> set[int]:
        return self.scheduler.eos_ids

    @eos_ids.setter
    def eos_ids(self, ids: set[int]) -> None:
        self.scheduler.eos_ids = ids

    @property
    def max_waiting(self) -> int:
        return self.scheduler.max_waiting

    @max_waiting.setter
    def max_waiting(self, value: int) -> None:
        self.scheduler.max_waiting = value

    # ---- for callers -------------------------------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], settings: SamplingSettings, stop: StopFlag | None = None,
               stop_strings: tuple[str, ...] = (), record_steps: bool = True) -> RequestHandle:
        room = self.backend.context - len(prompt_ids)
        if room <= 0:
            raise GenerationError(f"The prompt has {len(prompt_ids):,} tokens and fills the model's whole context "
                                  f"({self.backend.context:,}); shorten the system prompt or the message.")
        if not prompt_ids:
            raise GenerationError("The prompt is empty: there is nothing for the model to continue.")
        state = RequestState(next(self._ids), list(prompt_ids), settings, min(settings.max_new_tokens, room),
                             stop or StopFlag(), Detokenizer(self.tokenizer), tuple(stop_strings), record_steps)
        handle = RequestHandle(self, state.request_id, state.stop, state.sampler.seed)
        with self._lock:
            self.scheduler.add(state)
            self._handles[state.request_id] = handle
            self._ensure_thread()
            self._lock.notify_all()
        return handle

    def exclusive(self, job: Callable[[Backend], Any]) -> Any:
        """Run `job(backend)` on the engine's thread between two steps and return its result: scoring work
        (perplexity, evaluation, prompt log-probabilities) shares the model fairly with the replies being written and
        never runs a forward pass beside them. Keep each job small (one batch): replies wait while it runs."""
        future: Future = Future()
        with self._lock:
            self._jobs.append((job, future))
            self._ensure_thread()
            self._lock.notify_all()
        return future.result()

    def waiting(self, request_id: RequestId) -> WaitingInfo | None:
        """Where a request stands in line, or None once its prompt is being read."""
        with self._lock:
            place = self.scheduler.place(request_id)
            if place is None:
                return None
            rounds = -(-place // max(1, self.backend.max_batch))
            return WaitingInfo(place, rounds * self._recent_reply_s, len(self.scheduler.running))

    def load(self) -> tuple[int, int]:
        """(requests running, requests waiting)."""
        with self._lock:
            return len(self.scheduler.running), len(self.scheduler.waiting)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def notify(self) -> None:
        with self._lock:
            self._lock.notify_all()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._lock.notify_all()

    # ---- the engine thread -------------------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name=f"chat-engine-{self.backend.runtime}", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self.scheduler.has_work() and not self._jobs and not self.closed:
                    self._lock.wait()
                if self.closed and not self.scheduler.has_work() and not self._jobs:
                    return
                jobs, self._jobs = self._jobs, []
            for job, future in jobs:
                self._run_job(job, future)
            try:
                self.step()
            except Exception as err:  # the guard: every request in flight fails with the error; the engine goes on
                log.exception("chat engine step failed")
                self._fail_all(_failure(err))

    def _run_job(self, job: Callable[[Backend], Any], future: Future) -> None:
        try:
            future.set_result(job(self.backend))
        except Exception as err:  # the caller gets the error; the engine keeps serving
            future.set_exception(err)

    def step(self) -> None:
        """Plan, run, sample, update, deliver: one step for every request in flight."""
        with self._lock:
            self._deliver(self.scheduler.drop_stopped())
            plan = self.scheduler.schedule()
        if not plan:
            return
        keys, logits, failures = self._execute(plan)
        sampled = dict(zip(keys, self.sampler.sample(logits, [self._state(k).sampler for k in keys]))) if keys else {}
        with self._lock:
            outputs = [self.scheduler.finish(self._state(k), FinishReason.FAILED, error) for k, error in failures]
            outputs += self.scheduler.update(plan, sampled, len(keys))
            self._deliver(outputs)

    def _state(self, key: RequestId) -> RequestState:
        return self.scheduler.states[key]

    def _execute(self, plan: StepPlan) -> tuple[list[RequestId], torch.Tensor, list[tuple[RequestId, str]]]:
        """Run the plan: the rows whose next token is to be sampled (decode rows in store order, then prompts read in
        full), their logits, and the requests whose prompt could not be read (with why)."""
        keys, parts, failures = [], [], []
        if plan.decode:
            keys = list(self.store.keys)
            parts.append(self.store.decode([self.scheduler.running[k].last_token for k in keys]))
        whole = [c for c in plan.prefill if c.start == 0 and c.end == len(self._state(c.request_id).prompt_ids)]
        if whole:
            read, logits, failures = self._read_whole(whole)
            keys += read
            parts += [logits] if read else []
        for chunk in (c for c in plan.prefill if c not in whole):
            try:
                logits = self._read_chunk(chunk)
            except Exception as err:  # this prompt fails alone
                log.exception("reading a prompt failed")
                failures.append((chunk.request_id, _failure(err)))
                continue
            if logits is not None:
                keys.append(chunk.request_id)
                parts.append(logits[None])
        return keys, torch.cat(parts) if parts else torch.empty(0), failures

    def _read_whole(self, chunks: list[PrefillChunk]) -> tuple[list[RequestId], torch.Tensor, list[tuple]]:
        """Read these whole prompts in one pass; if that fails, one by one, so a bad prompt fails alone."""
        states = [self._state(c.request_id) for c in chunks]
        try:
            logits, prefilled = self.backend.read([s.prompt_ids for s in states])
        except Exception as err:
            if len(chunks) == 1:
                log.exception("reading a prompt failed")
                return [], torch.empty(0), [(chunks[0].request_id, _failure(err))]
            parts = [self._read_whole([c]) for c in chunks]
            read = [p for p in parts if p[0]]
            return ([k for p in read for k in p[0]], torch.cat([p[1] for p in read]) if read else torch.empty(0),
                    [f for p in parts for f in p[2]])
        for state, one in zip(states, prefilled):
            self.store.add(state.request_id, one)
        return [s.request_id for s in states], logits, []

    def _read_chunk(self, chunk: PrefillChunk) -> torch.Tensor | None:
        """Read part of a long prompt; the logits after it once the prompt is complete (it then joins the store)."""
        state = self._state(chunk.request_id)
        logits, prefilled = self.backend.read_more(self._partial.pop(chunk.request_id, None),
                                                   state.prompt_ids[chunk.start:chunk.end], len(state.prompt_ids))
        if chunk.end < len(state.prompt_ids):
            self._partial[chunk.request_id] = prefilled
            return None
        self.store.add(chunk.request_id, prefilled)
        return logits

    def _deliver(self, outputs: list[StepOutput]) -> None:
        """Push each output to its reader; a finished request leaves the store (called with the lock held)."""
        for output in outputs:
            self._handles[output.request_id].push(output)
            if output.finish is not None:
                self._release(output.request_id)
                self._recent_reply_s = 0.8 * self._recent_reply_s + 0.2 * output.stats.seconds

    def _release(self, key: RequestId) -> None:
        self._handles.pop(key, None)
        self._partial.pop(key, None)
        if key in self.store.keys:
            self.store.remove(key)

    def _fail_all(self, error: str) -> None:
        """After a broken step: every request in flight ends with the error, and the engine starts clean."""
        with self._lock:
            outputs = [self.scheduler.finish(s, FinishReason.FAILED, error) for s in self.scheduler.in_flight()]
            self._deliver(outputs)
            self.store.clear()
            self._partial.clear()
