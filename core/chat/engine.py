"""The chat engine: one scheduler per served model that batches every user's reply (continuous batching).

Requests wait in line (each sees its place), are read (prefill) when a slot frees up, and then decode
together: every step feeds each running request its last token, samples each with its own settings and
seed, and streams the new text. A request joins at the next step and leaves the moment it ends (end of
text, its token limit, a stop string, its user's Stop, or a closed connection), so one user's Stop never
touches another's reply. A request that fails fails alone; a failed step fails only the requests in it.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

import torch

from core.chat.backends import Backend, Batch
from core.chat.sampling import RequestSampler, SamplingSettings, token_step
from core.chat.token_view import TokenStep
from core.common.errors import BusyError, InputError
from core.common.stopping import StopFlag
from core.common.work_queue import duration, ordinal

# Why a reply ended, as shown to the user.
END_OF_TEXT, LENGTH, STOPPED, STOP_STRING, FAILED = ("end of text", "max new tokens", "stopped by user",
                                                    "next turn started", "failed")
DISCONNECTED = "the client went away"
STREAM_INTERVAL_S = 0.05  # a page is updated at most this often: more often costs the engine speed
# Every update of every page costs the server about as much as a few decode steps, so with many replies at once each
# page is updated proportionally less often (16 at once: every 0.4 s); the first token is always shown at once.
STREAM_USERS_PER_INTERVAL = 2
FIRST_TOKEN_POLL_S = 0.01
log = logging.getLogger("llm_playground")


class GenerationError(InputError):
    """The request cannot be generated (e.g. the prompt fills the whole context)."""


@dataclass
class ReplyStats:
    tokens: int = 0
    seconds: float = 0.0
    first_token_s: float | None = None  # from the request to its first token: waiting in line and reading included
    decode_tokens_per_s: float | None = None  # tokens after the first, per second
    seed: int | None = None
    finish: str = ""  # empty while the reply is still streaming
    batch: int = 0  # most requests decoding together while this one ran

    def describe(self) -> str:
        parts = [f"{self.tokens} token{'s' if self.tokens != 1 else ''}"]
        if self.decode_tokens_per_s is not None:
            parts.append(f"{self.decode_tokens_per_s:.1f} tok/s")
        if self.first_token_s is not None:
            parts.append(f"first token {self.first_token_s:.2f} s")
        if self.batch > 1:
            parts.append(f"batched with up to {self.batch - 1} other{'s' if self.batch > 2 else ''}")
        if self.seed is not None:
            parts.append(f"seed {self.seed}")
        if self.finish:
            parts.append(self.finish)
        return " · ".join(parts)


@dataclass
class ReplyChunk:
    """The reply so far; the last chunk has `done` set and the final stats."""

    text: str
    stats: ReplyStats  # a snapshot: later tokens do not change it
    steps: list[TokenStep] = field(default_factory=list)
    done: bool = False
    waiting: str = ""  # while in line: the place and estimated wait, for the user
    error: str = ""  # set when the request failed


class Request:
    """One reply being generated; its owner reads it with `chunks()` and ends it with its StopFlag."""

    def __init__(self, engine: ChatEngine, prompt_ids: list[int], settings: SamplingSettings, stop: StopFlag,
                 stop_strings: tuple[str, ...], max_new: int, record_steps: bool):
        self.engine, self.prompt_ids, self.settings, self.stop = engine, prompt_ids, settings, stop
        self.stop_strings, self.max_new, self.record_steps = stop_strings, max_new, record_steps
        self.sampler = RequestSampler(settings, prompt_ids)
        self.stats = ReplyStats(seed=self.sampler.seed)
        self.generated: list[int] = []
        self.steps: list[TokenStep] = []
        self.text = ""  # final text (set at the end; stop strings cut it)
        self.error = ""
        self.submitted = time.perf_counter()
        self.first_at: float | None = None
        self.done = threading.Event()
        self.last_token: int | None = None

    # ---- the engine's side -------------------------------------------------------------------------------------
    def accept(self, logits: torch.Tensor, batch_size: int) -> bool:
        """Sample the next token from this request's raw logits; True while the request goes on."""
        token = self.sampler.choose(logits)
        now = time.perf_counter()
        if self.first_at is None:
            self.first_at = now
            self.stats.first_token_s = now - self.submitted
        self.stats.batch = max(self.stats.batch, batch_size)
        if token in self.engine.eos_ids:
            return self.finish(END_OF_TEXT)
        if self.record_steps:
            self.steps.append(token_step(logits, token))
        self.generated.append(token)
        self.last_token = token
        self.stats.tokens = len(self.generated)
        if self.stop_strings:
            text = self.engine.decode(self.generated)
            cut = min((i for i in (text.find(s) for s in self.stop_strings) if i >= 0), default=None)
            if cut is not None:
                self.text = text[:cut].rstrip()
                return self.finish(STOP_STRING, decoded=True)
        if len(self.generated) >= self.max_new:
            return self.finish(LENGTH)
        if self.stop.stopped:
            return self.finish(STOPPED if self.stop.reason != DISCONNECTED else DISCONNECTED)
        return True

    def finish(self, reason: str, error: str = "", decoded: bool = False) -> bool:
        now = time.perf_counter()
        self.stats.finish, self.error = reason, error
        self.stats.seconds = now - self.submitted
        if self.first_at is not None and len(self.generated) > 1:
            self.stats.decode_tokens_per_s = (len(self.generated) - 1) / max(now - self.first_at, 1e-9)
        if not decoded:
            self.text = self.engine.decode(self.generated)
        self.done.set()
        self.engine.notify()
        return False

    # ---- the owner's side --------------------------------------------------------------------------------------
    def chunks(self, interval: float = STREAM_INTERVAL_S) -> Iterator[ReplyChunk]:
        """The reply as it grows, at most one chunk per `interval` (longer when many replies stream at once, since
        each update costs the server work); a closed iterator cancels the request."""
        shown, said = -1, ""
        try:
            while not self.done.is_set():
                waiting = self.engine.waiting_message(self)
                if waiting != said or len(self.generated) != shown:
                    shown, said = len(self.generated), waiting
                    yield ReplyChunk(self.engine.decode(self.generated).rstrip("\ufffd"), replace(self.stats),
                                     list(self.steps), waiting=waiting)
                running = self.engine.load()[0]
                self.done.wait(interval * max(1.0, running / STREAM_USERS_PER_INTERVAL) if self.generated
                               else min(interval, FIRST_TOKEN_POLL_S))
            yield ReplyChunk(self.text, replace(self.stats), list(self.steps), done=True, error=self.error)
        finally:
            if not self.done.is_set():  # the reader went away (closed page, dropped API client)
                self.stop.stop(DISCONNECTED)
                self.engine.notify()

    def snapshot(self) -> ReplyChunk:
        """The reply as it is now, without waiting (the final one once the request is done)."""
        if self.done.is_set():
            return ReplyChunk(self.text, replace(self.stats), list(self.steps), done=True, error=self.error)
        return ReplyChunk(self.engine.decode(self.generated).rstrip("\ufffd"), replace(self.stats), list(self.steps),
                          waiting=self.engine.waiting_message(self))

    def result(self) -> ReplyChunk:
        """The whole reply at once (scripts, tests, benchmarks)."""
        chunk = None
        for chunk in self.chunks(interval=0.2):
            pass
        return chunk


class ChatEngine:
    """Schedules every request for one backend: a line of waiting requests and a batch of running ones."""

    def __init__(self, backend: Backend, tokenizer, eos_ids: set[int], max_waiting: int = 64):
        self.backend, self.tokenizer, self.eos_ids = backend, tokenizer, eos_ids
        self.max_waiting = max_waiting
        self._lock = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._running: dict[int, Request] = {}
        self._batch: Batch = backend.new_batch()
        self._thread: threading.Thread | None = None
        self._recent_reply_s = 5.0  # moving average, for the estimated wait
        self._jobs: deque[tuple[Callable[[Backend], Any], Future]] = deque()
        self.closed = False

    # ---- for callers -------------------------------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], settings: SamplingSettings, stop: StopFlag | None = None,
               stop_strings: tuple[str, ...] = (), record_steps: bool = True) -> Request:
        room = self.backend.context - len(prompt_ids)
        if room <= 0:
            raise GenerationError(f"The prompt has {len(prompt_ids):,} tokens and fills the model's whole context "
                                  f"({self.backend.context:,}); shorten the system prompt or the message.")
        request = Request(self, prompt_ids, settings, stop or StopFlag(), stop_strings,
                          min(settings.max_new_tokens, room), record_steps)
        with self._lock:
            if len(self._waiting) >= self.max_waiting:
                raise BusyError(f"The chat queue is full ({len(self._waiting)} requests waiting); try again in a "
                                "moment.")
            self._waiting.append(request)
            self._ensure_thread()
            self._lock.notify_all()
        return request

    def exclusive(self, job: Callable[[Backend], Any]) -> Any:
        """Run `job(backend)` on the engine's thread between two decode steps and return its result: scoring work
        (perplexity, evaluation, prompt log-probabilities) shares the model fairly with the replies being written and
        never runs a forward pass beside them. Keep each job small (one batch): replies wait while it runs."""
        future: Future = Future()
        with self._lock:
            self._jobs.append((job, future))
            self._ensure_thread()
            self._lock.notify_all()
        return future.result()

    def waiting_message(self, request: Request) -> str:
        with self._lock:
            if request not in self._waiting:
                return ""
            place = list(self._waiting).index(request) + 1
            rounds = -(-place // max(1, self.backend.max_batch))
            return (f"Waiting in line: {ordinal(place)}, about {duration(rounds * self._recent_reply_s)} "
                    f"({len(self._running)} replies being written)")

    def load(self) -> tuple[int, int]:
        """(requests running, requests waiting)."""
        with self._lock:
            return len(self._running), len(self._waiting)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def notify(self) -> None:
        with self._lock:
            self._lock.notify_all()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._lock.notify_all()

    # ---- the scheduler thread ---------------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name=f"chat-engine-{self.backend.runtime}", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._running and not self._jobs and not self.closed:
                    self._lock.wait()
                if self.closed and not self._waiting and not self._running and not self._jobs:
                    return
                job = self._jobs.popleft() if self._jobs else None
            if job is not None:
                self._run_job(*job)
            self._admit()
            self._drop_stopped()
            if self._running:
                self._step()

    def _admit(self) -> None:
        """Read the prompts of waiting requests while there is room in the batch."""
        while True:
            with self._lock:
                if not self._waiting or len(self._running) >= self.backend.max_batch:
                    return
                request = self._waiting.popleft()
            if request.stop.stopped:
                request.finish(STOPPED if request.stop.reason != DISCONNECTED else DISCONNECTED)
                continue
            try:
                logits, sequence = self.backend.prefill(request.prompt_ids)
                going = request.accept(logits, len(self._running) + 1)
            except Exception as err:  # this request's prompt or settings: it fails alone
                log.exception("chat request failed while reading its prompt")
                request.finish(FAILED, f"{type(err).__name__}: {err}")
                continue
            if going:
                with self._lock:
                    self._running[id(request)] = request
                self._batch.join(id(request), sequence)
            self._remember(request)

    def _drop_stopped(self) -> None:
        for key, request in list(self._running.items()):
            if request.stop.stopped and not request.done.is_set():
                request.finish(STOPPED if request.stop.reason != DISCONNECTED else DISCONNECTED)
            if request.done.is_set():
                self._leave(key)

    def _leave(self, key: int) -> None:
        with self._lock:
            request = self._running.pop(key, None)
        self._batch.leave(key)
        if request is not None:
            self._remember(request)

    def _step(self) -> None:
        running = dict(self._running)
        try:
            logits = self._batch.step({key: r.last_token for key, r in running.items()})
        except Exception as err:  # the whole step failed: its requests fail, the engine keeps serving
            log.exception("chat engine step failed")
            for key, request in running.items():
                request.finish(FAILED, f"{type(err).__name__}: {err}")
                self._leave(key)
            self._batch = self.backend.new_batch()
            return
        for key, request in running.items():
            try:
                going = request.accept(logits[key], len(running))
            except Exception as err:
                log.exception("chat request failed while sampling")
                going = request.finish(FAILED, f"{type(err).__name__}: {err}")
            if not going:
                self._leave(key)

    def _run_job(self, job: Callable[[Backend], Any], future: Future) -> None:
        try:
            future.set_result(job(self.backend))
        except Exception as err:  # the caller gets the error; the engine keeps serving
            future.set_exception(err)

    def _remember(self, request: Request) -> None:
        if request.done.is_set():
            self._recent_reply_s = 0.8 * self._recent_reply_s + 0.2 * request.stats.seconds
