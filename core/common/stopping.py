"""Stop flags that end long work (generation, training, sweeps) from another thread, and the one Stop pattern.

Every tab follows the same pattern: a user's `RunControl` (one per browser session, in gr.State)
hands each run a fresh `StopFlag` when the run starts; the Stop button stops whatever flag the
control holds. A run that waits in the heavy-work queue already holds its flag, so a Stop pressed
while it waits cancels it too, and one user's Stop never reaches another user's run.
"""
from __future__ import annotations

import threading
import uuid

import torch
from transformers import StoppingCriteria

BY_USER = "stopped by you"


class StopFlag:
    """Set by the user's Stop button (or a time budget); checked by the work between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def stop(self, reason: str = BY_USER) -> None:
        if not self._event.is_set():
            self.reason = reason
        self._event.set()

    @property
    def stopped(self) -> bool:
        return self._event.is_set()

    def __deepcopy__(self, _memo) -> "StopFlag":
        # gr.State deep-copies its initial value once per session (and an Event cannot be copied):
        # every session gets its own fresh flag, so one user's Stop never reaches another's work.
        return StopFlag()


class RunControl:
    """One user's handle on their current run in one tab: `begin` gives each run a fresh flag, `stop` sets it."""

    def __init__(self, owner: str | None = None) -> None:
        self.owner = owner or uuid.uuid4().hex  # who the heavy-work queue counts this user as
        self._flag: StopFlag | None = None
        self._lock = threading.Lock()

    def begin(self, reason: str = BY_USER) -> StopFlag:
        """A fresh flag for a new run; a run of this control still going is stopped first (one at a time), with
        `reason` (what the user did that ended it)."""
        with self._lock:
            if self._flag is not None:
                self._flag.stop(reason)
            self._flag = StopFlag()
            return self._flag

    def stop(self, reason: str = BY_USER) -> bool:
        """Stop the current run; False when there was none left to stop."""
        with self._lock:
            flag, self._flag = self._flag, None
        if flag is None or flag.stopped:
            return False
        flag.stop(reason)
        return True

    def __deepcopy__(self, _memo) -> "RunControl":
        return RunControl()  # one per browser session, like StopFlag


class StopOnFlag(StoppingCriteria):
    """Ends `model.generate` at the next token once the flag is set."""

    def __init__(self, flag: StopFlag):
        self.flag = flag

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.flag.stopped, dtype=torch.bool, device=input_ids.device)
