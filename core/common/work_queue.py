"""A fair share of one machine for heavy work: a few runs at once, the rest waiting in line where they can see it.

Heavy work (fine-tuning, quantization sweeps, bias probes, SHAP, batch labelling) goes through one
`WorkQueue` shared by every user. Each user has at most one heavy run at a time; runs start in
arrival order as slots free up; a waiting user sees their place and an estimated wait, and can
Stop while waiting. Every run gets the operator's time budget: when it runs out the run's flag is
stopped with that reason, and the run ends cleanly with what it has so far.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from core.common.errors import BusyError, StoppedError
from core.common.stopping import RunControl, StopFlag

Progress = Callable[[float, str], None]
WAIT_POLL_S = 0.25


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


@dataclass
class _Ticket:
    owner: str
    what: str
    flag: StopFlag
    started: float | None = None


class WorkQueue:
    """`slots` heavy runs at once; each gets `time_budget_s` seconds before its flag is stopped."""

    def __init__(self, slots: int = 2, time_budget_s: float = 3600.0, typical_run_s: float = 60.0):
        self.slots = max(1, int(slots))
        self.time_budget_s = time_budget_s
        self._lock = threading.Condition()
        self._waiting: deque[_Ticket] = deque()
        self._running: list[_Ticket] = []
        self._recent_s = typical_run_s  # moving average of finished runs, for the wait estimate

    # ---- what a waiting user is told ------------------------------------------------------------------------
    def position(self, ticket: _Ticket) -> int:
        """1 = next to start."""
        with self._lock:
            return list(self._waiting).index(ticket) + 1 if ticket in self._waiting else 0

    def estimated_wait(self, place: int) -> float:
        """Seconds until the run `place`-th in line starts, from the average length of recent runs."""
        with self._lock:
            now = time.monotonic()
            left = sorted(max(0.0, self._recent_s - (now - t.started)) for t in self._running if t.started)
            if len(left) < self.slots:
                left = [0.0] * (self.slots - len(left)) + left
            rounds, index = divmod(place - 1, self.slots)
            return left[index] + rounds * self._recent_s

    def status(self) -> str:
        with self._lock:
            return f"{len(self._running)} heavy run(s) going, {len(self._waiting)} waiting (of {self.slots} at once)"

    # ---- running ---------------------------------------------------------------------------------------------
    @contextmanager
    def run(self, control: RunControl, what: str, progress: Progress | None = None) -> Iterator[StopFlag]:
        """Hold a slot for the body; yields the run's stop flag (stopped by the user or by the time budget)."""
        report = progress or (lambda *_: None)
        with self._lock:
            mine = [t for t in [*self._running, *self._waiting] if t.owner == control.owner]
            if mine:
                raise BusyError(f"You already have a run going ({mine[0].what}); wait for it to finish or press Stop.")
            ticket = _Ticket(control.owner, what, control.begin())
            self._waiting.append(ticket)
        try:
            self._wait_for_slot(ticket, report)
        except BaseException:
            with self._lock:
                if ticket in self._waiting:
                    self._waiting.remove(ticket)
                self._lock.notify_all()
            raise
        budget = threading.Timer(self.time_budget_s, ticket.flag.stop,
                                 kwargs={"reason": f"the time budget of {duration(self.time_budget_s)} ran out"})
        budget.daemon = True
        budget.start()
        try:
            yield ticket.flag
        finally:
            budget.cancel()
            with self._lock:
                self._running.remove(ticket)
                self._recent_s = 0.7 * self._recent_s + 0.3 * (time.monotonic() - ticket.started)
                self._lock.notify_all()

    def _wait_for_slot(self, ticket: _Ticket, report: Progress) -> None:
        with self._lock:
            while True:
                if ticket.flag.stopped:
                    raise StoppedError(f"Cancelled while waiting in line ({ticket.flag.reason}).")
                if len(self._running) < self.slots and self._waiting[0] is ticket:
                    self._waiting.popleft()
                    ticket.started = time.monotonic()
                    self._running.append(ticket)
                    self._lock.notify_all()
                    return
                place = list(self._waiting).index(ticket) + 1
                self._lock.release()
                try:
                    report(0.0, f"Waiting for a free slot: you are {ordinal(place)} in line, about "
                                f"{duration(self.estimated_wait(place))} ({self.status()}). Stop cancels.")
                finally:
                    self._lock.acquire()
                self._lock.wait(WAIT_POLL_S)
