"""Background training jobs: one per user, in the shared heavy-work queue, each in a child process.

Training runs in its own process so that running out of memory, a crash in a native library or a
kill leaves the app serving everyone else: the job just fails with a message saying what happened.
Progress and Stop cross the process boundary through a queue and an event. The registry lives as
long as the app; a user finds their job again by the id their browser keeps.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import signal
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from core.common.errors import BusyError, PlaygroundError
from core.common.stopping import RunControl, StopFlag
from core.common.work_queue import WorkQueue
from core.finetune.progress import TrainingProgress

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
POLL_S = 0.2
log = logging.getLogger("llm_playground")

# Runs in the child: work(*args, progress, stop) -> result. A module-level function, so the child can import it.
Work = Callable[..., Any]


class TrainingCrashed(PlaygroundError):
    """The training process ended without a result (killed, out of memory, a native crash)."""


@dataclass
class Job:
    control: RunControl
    description: str
    progress: TrainingProgress = field(default_factory=TrainingProgress)
    state: str = QUEUED
    result: object = None
    error: str | None = None
    pid: int | None = None  # of the training process, while it runs
    thread: threading.Thread | None = None

    @property
    def owner(self) -> str:
        return self.control.owner

    @property
    def active(self) -> bool:
        return self.state in (QUEUED, RUNNING)

    def wait(self, timeout: float | None = None) -> bool:
        """True once the job has finished (for scripts and tests)."""
        if self.thread is not None:
            self.thread.join(timeout)
        return not self.active


class ProgressRelay:
    """TrainingProgress's writing side, in the child: every call is sent to the parent's real TrainingProgress."""

    def __init__(self, events) -> None:
        self._events = events

    def _send(self, method: str, *args) -> None:
        self._events.put(("progress", (method, args)))

    def set_phase(self, phase: str) -> None:
        self._send("set_phase", phase)

    def begin(self, total_steps: int) -> None:
        self._send("begin", total_steps)

    def end(self) -> None:
        self._send("end")

    def advance(self, step: int) -> None:
        self._send("advance", step)

    def log(self, step: int, logs: dict[str, float], best_metric: str | None) -> None:
        self._send("log", step, dict(logs), best_metric)


class ChildStopFlag(StopFlag):
    """The child's view of the run's StopFlag: the parent sets the event and writes the reason."""

    def __init__(self, event, reason) -> None:  # no super().__init__: it would make a new local event
        self._event, self._reason = event, reason

    @property
    def reason(self) -> str:
        return self._reason.value.decode()


def _child_main(work: Work, args: tuple, events, stop_event, stop_reason) -> None:
    """Entry point of the training process."""
    from core.models.device import configure_threads

    configure_threads()
    stop = ChildStopFlag(stop_event, stop_reason)
    try:
        events.put(("result", work(*args, ProgressRelay(events), stop)))
    except PlaygroundError as err:
        events.put(("error", (str(err), None)))
    except BaseException as err:  # reported to the parent, which logs the traceback and keeps serving
        events.put(("error", (f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                              traceback.format_exc())))


def crash_message(exit_code: int | None) -> str:
    if exit_code is not None and exit_code < 0:
        name = signal.Signals(-exit_code).name if -exit_code in signal.valid_signals() else f"signal {-exit_code}"
        why = f"it was killed ({name}{': the machine probably ran out of memory' if name == 'SIGKILL' else ''})"
    else:
        why = f"it exited with code {exit_code}"
    return (f"The training process ended unexpectedly: {why}. The app is still running; try a smaller model, "
            "batch size or max length.")


class JobRegistry:
    def __init__(self, work_queue: WorkQueue):
        self.work_queue = work_queue
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._context = mp.get_context("spawn")  # fork would copy the server's threads and locks

    def submit(self, owner: str, description: str, work: Work, *args) -> Job:
        """Queue `work(*args, progress, stop)` for `owner`; it runs in a child process once a slot is free."""
        with self._lock:
            current = self._jobs.get(owner)
            if current is not None and current.active:
                raise BusyError(f"You already have a run in progress ({current.description}); "
                                "wait for it to finish or press Stop.")
            job = Job(RunControl(owner), description)
            self._jobs[owner] = job
        job.thread = threading.Thread(target=self._run, args=(job, work, args), name=f"finetune-{owner[:8]}",
                                      daemon=True)
        job.thread.start()
        return job

    def _run(self, job: Job, work: Work, args: tuple) -> None:
        try:
            with self.work_queue.run(job.control, job.description, lambda _f, text: job.progress.set_phase(text)) as flag:
                job.state = RUNNING
                job.result = self._in_child(job, flag, work, args)
            job.state = DONE
        except PlaygroundError as err:
            job.error, job.state = str(err), FAILED
        except Exception as err:  # a bug in this process: logged, and the app keeps serving
            log.exception("fine-tuning job %s failed", job.description)
            job.error, job.state = f"{type(err).__name__}: {err}", FAILED

    def _in_child(self, job: Job, flag: StopFlag, work: Work, args: tuple):
        events, stop_event, stop_reason = self._context.Queue(), self._context.Event(), self._context.Array("c", 256)
        process = self._context.Process(target=_child_main, args=(work, args, events, stop_event, stop_reason),
                                        daemon=True)
        process.start()
        job.pid = process.pid
        try:
            while True:
                if flag.stopped and not stop_event.is_set():
                    stop_reason.value = flag.reason.encode()[:255]
                    stop_event.set()
                try:
                    kind, payload = events.get(timeout=POLL_S)
                except queue.Empty:
                    if not process.is_alive() and events.empty():
                        raise TrainingCrashed(crash_message(process.exitcode)) from None
                    continue
                if kind == "progress":
                    method, values = payload
                    getattr(job.progress, method)(*values)
                elif kind == "result":
                    return payload
                else:
                    message, trace = payload
                    if trace:
                        log.error("training process failed:\n%s", trace)
                    raise TrainingCrashed(message)
        finally:
            job.pid = None
            process.join(timeout=10)
            if process.is_alive():
                process.kill()

    def get(self, owner: str) -> Job | None:
        with self._lock:
            return self._jobs.get(owner)

    def stop(self, owner: str) -> bool:
        job = self.get(owner)
        return job is not None and job.active and job.control.stop()
