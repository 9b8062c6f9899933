"""Log-probabilities a served model gives the tokens of a sequence: the one scoring pass behind the Evaluate tab and
the API's `echo`.

`score_batch(backend, requests)` runs one small batch on a chat backend: on PyTorch the rows are left-padded into one
forward pass and only the positions that are scored get logits (`logits_to_keep`); on ONNX Runtime each distinct row
goes through `backend.full_logits`. Requests that read the same tokens (the choices of a question whose answers are one
token each) share one row. Nothing of size (sequence, vocabulary) outlives a row: each scored position keeps the
log-probability of its actual token, whether that token was the model's top choice, and at most 20 alternatives.

`score_requests` splits many requests into such batches and runs each through the engine's `exclusive` (on the
engine's thread, between two decode steps), so chat replies keep flowing while a task is scored.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from core.chat.backends import Backend, TorchBackend
from core.common.errors import InputError, StoppedError
from core.common.stopping import StopFlag
from core.common.work_queue import duration

MAX_TOP = 20
Progress = Callable[[float, str], None]
Run = Callable[[Callable[[Backend], Any]], Any]  # ChatEngine.exclusive, or a direct call for a bare backend


@dataclass(frozen=True)
class ScoreRequest:
    """Score ids[start:], each token from the tokens before it."""

    ids: tuple[int, ...]
    start: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.start < len(self.ids):
            raise InputError(f"Nothing to score: {len(self.ids)} tokens, scoring from token {self.start + 1}.")

    @property
    def reads(self) -> tuple[tuple[int, ...], int]:
        """What the forward pass needs: every token but the last, and how many positions at its end are scored."""
        return self.ids[:-1], len(self.ids) - self.start


@dataclass(frozen=True)
class TokenScores:
    """One request's scored tokens, in order."""

    logprobs: np.ndarray  # (n,) log-probability of each actual token
    greedy: np.ndarray  # (n,) bool: the token was the model's most likely one
    top_ids: np.ndarray  # (n, k) the k most likely tokens at each position, best first
    top_logprobs: np.ndarray  # (n, k)

    @property
    def total(self) -> float:
        return float(self.logprobs.astype(np.float64).sum())

    @property
    def all_greedy(self) -> bool:
        return bool(self.greedy.all())


@dataclass(frozen=True)
class BatchLimits:
    """How much one exclusive job may do: chat replies wait while it runs."""

    rows: int = 16
    tokens: int = 1024  # padded tokens read in one forward pass


def _keeps_logits(model) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


@torch.inference_mode()
def _torch_rows(backend: TorchBackend, inputs: list[tuple[int, ...]], keep: int) -> list[torch.Tensor]:
    """Logits of the last `keep` positions of each input (keep, vocab), in one left-padded forward pass."""
    width = max(map(len, inputs))
    ids = torch.zeros((len(inputs), width), dtype=torch.long)
    mask = torch.zeros((len(inputs), width), dtype=torch.long)
    for row, seq in enumerate(inputs):
        ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
    kwargs: dict[str, Any] = {"logits_to_keep": keep} if _keeps_logits(backend.model) else {}
    if not bool(mask.all()):  # padding: hide it, and count positions from each row's first real token
        kwargs |= {"attention_mask": mask.to(backend.torch_device),
                   "position_ids": (mask.cumsum(-1) - 1).clamp(min=0).to(backend.torch_device)}
    logits = backend.model(input_ids=ids.to(backend.torch_device), **kwargs).logits
    return list(logits[:, -keep:].cpu())


def _scores(logits: torch.Tensor, targets: Sequence[int], top_k: int) -> TokenScores:
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    target = torch.tensor(targets)
    chosen = log_probs.gather(1, target[:, None])[:, 0]
    greedy = log_probs.argmax(-1) == target
    top = log_probs.topk(top_k, dim=-1) if top_k else None
    if top is None:
        return TokenScores(chosen.numpy(), greedy.numpy(), np.zeros((len(target), 0), int), np.zeros((len(target), 0)))
    return TokenScores(chosen.numpy(), greedy.numpy(), top.indices.numpy(), top.values.numpy())


def score_batch(backend: Backend, requests: Sequence[ScoreRequest], top_k: int = 0) -> list[TokenScores]:
    """Score a few requests at once (one exclusive job); top_k alternatives per position, at most MAX_TOP."""
    top_k = min(top_k, MAX_TOP)
    rows: dict[tuple, int] = {}
    for request in requests:
        rows.setdefault(request.reads[0], len(rows))
    keep = max(request.reads[1] for request in requests)
    inputs = list(rows)
    if isinstance(backend, TorchBackend):
        logits = _torch_rows(backend, inputs, keep)
    else:
        logits = [backend.full_logits(list(seq)) for seq in inputs]
    return [_scores(logits[rows[r.reads[0]]][-r.reads[1]:], r.ids[r.start:], top_k) for r in requests]


def plan_batches(requests: Sequence[ScoreRequest], limits: BatchLimits = BatchLimits()) -> list[list[int]]:
    """Indices of the requests in each batch: similar lengths together (less padding), requests that read the same
    tokens in the same batch, at most `limits.rows` distinct rows and `limits.tokens` padded tokens each."""
    order = sorted(range(len(requests)), key=lambda i: (len(requests[i].ids), requests[i].reads[0]))
    batches: list[list[int]] = []
    current: list[int] = []
    rows: set[tuple] = set()
    for i in order:
        row = requests[i].reads[0]
        if row not in rows and current:
            wider = max(len(row), max(len(r) for r in rows))
            if len(rows) + 1 > limits.rows or (len(rows) + 1) * wider > limits.tokens:
                batches.append(current)
                current, rows = [], set()
        current.append(i)
        rows.add(row)
    if current:
        batches.append(current)
    return batches


def score_requests(run: Run, requests: Sequence[ScoreRequest], top_k: int = 0, limits: BatchLimits = BatchLimits(),
                   progress: Progress | None = None, stop: StopFlag | None = None, what: str = "sequences"
                   ) -> list[TokenScores]:
    """Score every request, one small batch per `run` call; results in request order. Stop is checked between
    batches; progress says how many are done and about how long the rest takes."""
    results: list[TokenScores | None] = [None] * len(requests)
    batches = plan_batches(requests, limits)
    cost = [sum(len(requests[i].ids) for i in batch) for batch in batches]  # for the estimate: tokens, not batches
    started, done = time.perf_counter(), 0
    for n, batch in enumerate(batches):
        if stop is not None and stop.stopped:
            raise StoppedError(f"Stopped after {done:,} of {len(requests):,} {what} ({stop.reason}).")
        chosen = [requests[i] for i in batch]
        for i, scores in zip(batch, run(lambda backend: score_batch(backend, chosen, top_k))):
            results[i] = scores
        done += len(batch)
        if progress is not None:
            left = (time.perf_counter() - started) / sum(cost[:n + 1]) * sum(cost[n + 1:])
            progress(done / len(requests), f"Scored {done:,} of {len(requests):,} {what}, about {duration(left)} left")
    return results  # type: ignore[return-value]
