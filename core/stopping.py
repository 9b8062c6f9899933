"""Per-request stop flags that end long work (generation, training, sweeps) from another thread."""
from __future__ import annotations

import threading

import torch
from transformers import StoppingCriteria


class StopFlag:
    """Set by the user's Stop button; checked by the work between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def stop(self) -> None:
        self._event.set()

    def reset(self) -> None:
        self._event.clear()

    @property
    def stopped(self) -> bool:
        return self._event.is_set()

    def __deepcopy__(self, _memo) -> "StopFlag":
        # gr.State deep-copies its initial value once per session (and an Event cannot be copied):
        # every session gets its own fresh flag, so one user's Stop never reaches another's work.
        return StopFlag()


class StopOnFlag(StoppingCriteria):
    """Ends `model.generate` at the next token once the flag is set."""

    def __init__(self, flag: StopFlag):
        self.flag = flag

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.flag.stopped, dtype=torch.bool, device=input_ids.device)
