"""The reader's side of a request: the engine pushes each step's StepOutput into the request's queue; the reader
gathers them into the reply so far (text deltas, token-view steps, stats) at the pace it wants.

A reader that goes away (a closed page, a dropped API client) closes its `chunks()` iterator, which stops the
request: its row is freed at the next step. Nothing here decodes the whole reply again: text arrives as deltas.
"""
from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Iterator

from core.chat.scheduler import DISCONNECTED
from core.chat.token_view import TokenStep
from core.chat.types import FinishReason, ReplyStats, RequestId, StepOutput, WaitingInfo
from core.common.stopping import StopFlag

if TYPE_CHECKING:
    from core.chat.engine import ChatEngine

STREAM_INTERVAL_S = 0.05  # a page is updated at most this often: more often costs the engine speed
# Every update of every page costs the server about as much as a few decode steps, so with many replies at once each
# page is updated proportionally less often (16 at once: every 0.4 s); the first token is always shown at once.
STREAM_USERS_PER_INTERVAL = 2
WAITING_POLL_S = 0.25  # how often a reply still in line looks at its place


@dataclass
class ReplyChunk:
    """The reply so far; the last chunk has `done` set and the final stats."""

    text: str
    stats: ReplyStats  # a snapshot: later tokens do not change it
    steps: list[TokenStep] = field(default_factory=list)
    done: bool = False
    waiting: WaitingInfo | None = None  # while in line: the place and estimated wait
    error: str = ""  # set when the request failed

    @property
    def failed(self) -> bool:
        return self.stats.finish is FinishReason.FAILED


class RequestHandle:
    """One reply being generated; its owner reads it with `chunks()` or `result()` and ends it with `stop`."""

    def __init__(self, engine: ChatEngine, request_id: RequestId, stop: StopFlag, seed: int | None):
        self.engine, self.request_id, self.stop = engine, request_id, stop
        self.outputs: queue.SimpleQueue[StepOutput] = queue.SimpleQueue()
        self.text, self.steps, self.error = "", [], ""
        self.stats = ReplyStats(seed=seed)
        self.done = False

    @property
    def generated(self) -> int:
        return self.stats.tokens

    def push(self, output: StepOutput) -> None:
        """The engine's side: one step's output for this request."""
        self.outputs.put(output)

    def _take(self, output: StepOutput) -> None:
        self.text += output.text
        self.steps += output.steps
        if output.stats is not None:
            self.stats = output.stats
        if output.finish is not None:
            self.text = output.final_text if output.final_text is not None else self.text
            self.error, self.done = output.error, True

    def _drain(self, timeout: float | None) -> bool:
        """Take every output that has arrived, waiting up to `timeout` for the first; True if any came."""
        try:
            self._take(self.outputs.get(timeout=timeout) if timeout else self.outputs.get_nowait())
        except queue.Empty:
            return False
        while True:
            try:
                self._take(self.outputs.get_nowait())
            except queue.Empty:
                return True

    def snapshot(self) -> ReplyChunk:
        """The reply as it is now, without waiting."""
        self._drain(None)
        waiting = None if self.done else self.engine.waiting(self.request_id)
        return ReplyChunk(self.text, replace(self.stats), list(self.steps), self.done, waiting, self.error)

    def chunks(self, interval: float = STREAM_INTERVAL_S) -> Iterator[ReplyChunk]:
        """The reply as it grows, at most one chunk per `interval` (longer when many replies stream at once, since
        each update costs the server work); a closed iterator stops the request."""
        shown = None
        try:
            chunk = self.snapshot()
            while not chunk.done:
                if (len(chunk.text), len(chunk.steps), chunk.waiting) != shown:
                    shown = (len(chunk.text), len(chunk.steps), chunk.waiting)
                    yield chunk
                running = self.engine.load()[0]
                pace = interval * max(1.0, running / STREAM_USERS_PER_INTERVAL) if self.generated else 0.0
                start = time.perf_counter()
                self._drain(WAITING_POLL_S if not self.generated else max(pace, 1e-3))
                time.sleep(max(0.0, pace - (time.perf_counter() - start)))
                chunk = self.snapshot()
            yield chunk
        finally:
            if not self.done:  # the reader went away (closed page, dropped API client)
                self.cancel(DISCONNECTED)

    def wait(self, timeout: float) -> bool:
        """Up to `timeout` seconds for the reply to end; True once it has."""
        deadline = time.perf_counter() + timeout
        while not self.done and time.perf_counter() < deadline:
            self._drain(max(1e-3, deadline - time.perf_counter()))
        return self.done

    def result(self) -> ReplyChunk:
        """The whole reply at once (scripts, tests, benchmarks)."""
        while not self.done:
            self._drain(1.0)
        return self.snapshot()

    def cancel(self, reason: str = DISCONNECTED) -> None:
        self.stop.stop(reason)
        self.engine.notify()
