"""What the app prepares when it starts, one stage after another in a background thread, and where each stage
stands: the UI's "getting ready" notice and GET /readiness both read `Readiness.report()`."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, replace
from enum import Enum
from typing import Callable

from core.common.progress import Progress, forward_only

log = logging.getLogger("llm_playground")


class StageState(str, Enum):
    WAITING = "waiting"
    RUNNING = "running"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class Stage:
    """One thing to prepare: `run` does it (building what is not cached yet), reporting 0..1 to its progress."""

    name: str
    label: str  # what a user reads, e.g. "Chat model SmolLM2-135M-Instruct"
    tabs: tuple[str, ...]  # the tabs that wait for it
    run: Callable[[Progress], object]


@dataclass(frozen=True)
class StageStatus:
    name: str
    label: str
    tabs: tuple[str, ...]
    state: StageState = StageState.WAITING
    fraction: float = 0.0
    message: str = ""
    seconds: float = 0.0  # spent so far, or in all once ready or failed
    error: str = ""

    def as_dict(self) -> dict:
        return asdict(self) | {"state": self.state.value, "tabs": list(self.tabs)}


@dataclass(frozen=True)
class ReadinessReport:
    stages: tuple[StageStatus, ...]

    @property
    def ready(self) -> bool:
        return all(s.state is StageState.READY for s in self.stages)

    @property
    def settled(self) -> bool:
        """Nothing left to do (ready, or a stage failed: it is tried again when a user first needs it)."""
        return all(s.state in (StageState.READY, StageState.FAILED) for s in self.stages)

    @property
    def fraction(self) -> float:
        return sum(1.0 if s.state is StageState.READY else s.fraction for s in self.stages) / max(1, len(self.stages))

    def as_dict(self) -> dict:
        return {"ready": self.ready, "settled": self.settled, "fraction": round(self.fraction, 4),
                "stages": [s.as_dict() for s in self.stages]}


class Readiness:
    """Runs its stages once, in order, off the caller's thread; `report()` is cheap and safe from any thread."""

    def __init__(self, stages: list[Stage] | tuple[Stage, ...] = ()):
        self._stages = tuple(stages)
        self._status = {s.name: StageStatus(s.name, s.label, s.tabs) for s in self._stages}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def report(self) -> ReadinessReport:
        with self._lock:
            return ReadinessReport(tuple(self._status[s.name] for s in self._stages))

    def start(self) -> None:
        """Begin preparing in a daemon thread (once; later calls do nothing)."""
        with self._lock:
            if self._thread is not None or not self._stages:
                return
            self._thread = threading.Thread(target=self.run, name="llmpg-prepare", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> ReadinessReport:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.report()

    def run(self) -> ReadinessReport:
        """Every stage in order, here and now; a failed stage is reported and the next one still runs."""
        for stage in self._stages:
            started = time.perf_counter()
            self._set(stage.name, state=StageState.RUNNING, message="Starting")

            def report(fraction: float, message: str, name=stage.name, since=started) -> None:
                self._set(name, fraction=fraction, message=message, seconds=time.perf_counter() - since)

            try:
                stage.run(forward_only(report))
            except Exception as err:  # the app still serves; the tab that needs it tries again and says why
                log.exception("preparing %s failed", stage.name)
                self._set(stage.name, state=StageState.FAILED, error=f"{type(err).__name__}: {err}",
                          seconds=time.perf_counter() - started)
                continue
            self._set(stage.name, state=StageState.READY, fraction=1.0, message="Ready",
                      seconds=time.perf_counter() - started)
            log.info("prepared %s in %.1f s", stage.name, time.perf_counter() - started)
        return self.report()

    def _set(self, name: str, **changes) -> None:
        with self._lock:
            self._status[name] = replace(self._status[name], **changes)
