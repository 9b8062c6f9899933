"""Live training state shared between the training thread and whoever shows it, plus the Trainer callbacks."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch
from transformers import TrainerCallback

from core.common.stopping import StopFlag

LOSS_TERMS = ("kd_loss", "ce_loss")  # what core.finetune.distil logs beside the loss


@dataclass(frozen=True)
class ProgressSnapshot:
    phase: str  # what is happening now, in words
    step: int
    total_steps: int
    elapsed: float  # seconds since training (not loading) began
    train_loss: tuple[tuple[int, float], ...]  # (step, loss)
    eval_loss: tuple[tuple[int, float], ...]
    eval_metrics: tuple[tuple[int, str, float], ...]  # (step, metric, value) of the metric that picks the best model
    loss_terms: tuple[tuple[int, str, float], ...]  # (step, term, value): the parts of a distillation loss
    version: int  # changes whenever anything above does, so a poller can skip redraws
    first_step: float | None = None  # `elapsed` when the first step ended (it also pays for warming up)

    @property
    def fraction(self) -> float:
        return self.step / self.total_steps if self.total_steps else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """From the pace of the steps after the first: the first one's warm-up made early ETAs several times too
        long. None until a second step has ended."""
        if self.step < 2 or not self.total_steps or self.first_step is None:
            return None
        return (self.elapsed - self.first_step) / (self.step - 1) * (self.total_steps - self.step)


class TrainingProgress:
    """Written by the training thread, read by UI polls; every access holds the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phase, self._step, self._total = "Queued", 0, 0
        self._start: float | None = None
        self._end: float | None = None
        self._first_step: float | None = None
        self._train: list[tuple[int, float]] = []
        self._eval: list[tuple[int, float]] = []
        self._metrics: list[tuple[int, str, float]] = []
        self._terms: list[tuple[int, str, float]] = []
        self._version = 0

    def _touch(self) -> None:
        self._version += 1

    def set_phase(self, phase: str) -> None:
        with self._lock:
            self._phase = phase
            self._touch()

    def begin(self, total_steps: int) -> None:
        with self._lock:
            self._total, self._start, self._phase = total_steps, time.perf_counter(), "Training"
            self._touch()

    def end(self) -> None:
        """Training proper is over (scoring and saving follow): the clock stops."""
        with self._lock:
            self._end = time.perf_counter()
            self._touch()

    def advance(self, step: int) -> None:
        with self._lock:
            if self._first_step is None and self._start is not None:
                self._first_step = time.perf_counter() - self._start
            self._step = step
            self._touch()

    def log(self, step: int, logs: dict[str, float], best_metric: str | None) -> None:
        with self._lock:
            if "loss" in logs:
                self._train.append((step, float(logs["loss"])))
            self._terms.extend((step, term, float(logs[term])) for term in LOSS_TERMS if term in logs)
            if "eval_loss" in logs:
                self._eval.append((step, float(logs["eval_loss"])))
            key = f"eval_{best_metric}" if best_metric else None
            if key in logs and key != "eval_loss":
                self._metrics.append((step, best_metric, float(logs[key])))
            self._touch()

    def snapshot(self) -> ProgressSnapshot:
        with self._lock:
            elapsed = (self._end or time.perf_counter()) - self._start if self._start else 0.0
            return ProgressSnapshot(self._phase, self._step, self._total, elapsed, tuple(self._train), tuple(self._eval),
                                    tuple(self._metrics), tuple(self._terms), self._version, self._first_step)


class LiveCallback(TrainerCallback):
    """Feeds TrainingProgress and ends training at the next step once the StopFlag is set."""

    def __init__(self, progress: TrainingProgress, stop: StopFlag):
        self.progress, self.stop = progress, stop

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress.begin(state.max_steps)

    def on_train_end(self, args, state, control, **kwargs):
        self.progress.end()

    def on_step_end(self, args, state, control, **kwargs):
        self.progress.advance(state.global_step)
        if self.stop.stopped:
            # evaluate the weights reached so far too, so the best of them (maybe these) is kept
            control.should_training_stop = control.should_evaluate = True
            self.progress.set_phase("Stopping: keeping the best weights so far")
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.progress.log(state.global_step, logs or {}, args.metric_for_best_model)


class BestWeightsCallback(TrainerCallback):
    """Keeps an in-memory copy of the trainable weights at the best evaluation and restores them at the end.

    In memory rather than checkpoints on disk: saving the model and optimizer at every evaluation costs
    more than the evaluation itself on a CPU, and only trainable tensors change (a LoRA adapter is small).
    """

    def __init__(self, metric: str, greater_is_better: bool):
        self.key = f"eval_{metric}"
        self.greater = greater_is_better
        self.best: float | None = None
        self.best_step: int | None = None
        self._weights: dict[str, torch.Tensor] | None = None

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        value = (metrics or {}).get(self.key)
        if value is None or model is None:
            return
        if self.best is None or (value > self.best if self.greater else value < self.best):
            self.best, self.best_step = float(value), state.global_step
            self._weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._weights is not None and model is not None:
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if name in self._weights:
                        param.copy_(self._weights[name])
