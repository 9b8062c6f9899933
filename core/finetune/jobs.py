"""Background training jobs: one per user, a limited number running at once, surviving page reloads.

The registry lives as long as the app; a user finds their job again by the id their browser keeps.
"""
from __future__ import annotations

import threading
import traceback
from dataclasses import dataclass, field
from typing import Callable

from core.finetune.progress import TrainingProgress
from core.stopping import StopFlag

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"

Work = Callable[[TrainingProgress, StopFlag], object]


class JobBusy(RuntimeError):
    """The user already has a run going; the message says so."""


@dataclass
class Job:
    owner: str
    description: str
    progress: TrainingProgress = field(default_factory=TrainingProgress)
    stop_flag: StopFlag = field(default_factory=StopFlag)
    state: str = QUEUED
    result: object = None
    error: str | None = None
    thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self.state in (QUEUED, RUNNING)

    def wait(self, timeout: float | None = None) -> bool:
        """True once the job has finished (for scripts and tests)."""
        if self.thread is not None:
            self.thread.join(timeout)
        return not self.active


class JobRegistry:
    def __init__(self, max_running: int = 1):
        # On a CPU two runs at once are each slower than one after the other, so by default one runs at a time.
        self._slots = threading.Semaphore(max_running)
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._waiting: list[Job] = []

    def submit(self, owner: str, description: str, work: Work) -> Job:
        """Start `work(progress, stop)` on a thread for `owner`; refuse while that owner's last job is active."""
        with self._lock:
            current = self._jobs.get(owner)
            if current is not None and current.active:
                raise JobBusy(f"You already have a run in progress ({current.description}); "
                              "wait for it to finish or press Stop.")
            job = Job(owner, description)
            self._jobs[owner] = job
            self._waiting.append(job)
        job.thread = threading.Thread(target=self._run, args=(job, work), name=f"finetune-{owner[:8]}", daemon=True)
        job.thread.start()
        return job

    def _run(self, job: Job, work: Work) -> None:
        while not self._slots.acquire(timeout=0.5):
            if job.stop_flag.stopped:
                with self._lock:
                    self._waiting.remove(job)
                job.state, job.error = FAILED, "Cancelled while waiting for another run to finish."
                return
            job.progress.set_phase(f"Waiting: {self.ahead_of(job)} other run(s) before this one")
        with self._lock:
            self._waiting.remove(job)
        job.state = RUNNING
        try:
            job.result = work(job.progress, job.stop_flag)
            job.state = DONE
        except Exception as err:  # the UI shows the message; the app keeps serving
            job.error = str(err).splitlines()[0] if str(err) else type(err).__name__
            job.state = FAILED
            traceback.print_exc()
        finally:
            self._slots.release()

    def ahead_of(self, job: Job) -> int:
        """Runs that start before `job`: the running ones plus those queued earlier."""
        with self._lock:
            running = sum(j.state == RUNNING for j in self._jobs.values())
            return running + (self._waiting.index(job) if job in self._waiting else 0)

    def get(self, owner: str) -> Job | None:
        with self._lock:
            return self._jobs.get(owner)

    def stop(self, owner: str) -> bool:
        job = self.get(owner)
        if job is None or not job.active:
            return False
        job.stop_flag.stop()
        return True
