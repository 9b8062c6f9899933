"""Perplexity and bits per byte of a text, with the sliding-window method of the transformers guide.

The one implementation every tab uses: Quantize and Fine-tune run it on a model they hold (`perplexity`,
`scored_windows`); Evaluate runs the same windows on a served model through its engine (core.evaluate.runs).
Each window reads up to `max_length` tokens and scores the tokens the previous window did not, so every token after
the first is scored exactly once, each predicted from up to `max_length` tokens of context; `stride` is how far each
window moves. Bits per byte divide the same negative log-likelihood by the UTF-8 bytes those scored tokens cover, so
models with different tokenizers compare fairly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from core.common.errors import InputError
from core.common.stopping import StopFlag
from core.evaluate.scoring import BatchLimits, Run, ScoreRequest, score_requests


@dataclass(frozen=True)
class Window:
    """Read ids[begin:end]; score the tokens first..end-1 (each from the tokens before it in the window)."""

    begin: int
    end: int
    first: int


def window_stride(stride: int, max_length: int) -> int:
    """The stride used: below the window length, so each window reads at least one token of context before the
    first token it scores (with disjoint windows that token would get no prediction at all)."""
    return max(1, min(stride, max_length - 1))


def plan_windows(n_tokens: int, max_length: int = 512, stride: int = 256) -> list[Window]:
    stride = window_stride(stride, max_length)
    windows, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        windows.append(Window(begin, end, max(prev_end, begin + 1)))  # a window's first token has no prediction
        prev_end = end
        if end == n_tokens:
            break
    return windows


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    mean_nll: float  # nats per predicted token
    tokens: int  # tokens scored
    windows: int
    bytes: int = 0  # UTF-8 bytes of the text the scored tokens cover
    context: int = 0  # tokens each window reads at most
    stride: int = 0

    @classmethod
    def of(cls, nll_sum: float, tokens: int, windows: int, n_bytes: int = 0, context: int = 0,
           stride: int = 0) -> PerplexityResult:
        mean = nll_sum / tokens
        return cls(math.exp(mean), mean, tokens, windows, n_bytes, context, stride)

    @property
    def bits_per_byte(self) -> float:
        return self.mean_nll * self.tokens / math.log(2) / self.bytes if self.bytes else float("nan")


def text_ids(tokenizer, text: str) -> list[int]:
    """The text's token ids as the tokenizer makes them (its special tokens included, as Quantize always did)."""
    ids = tokenizer(text)["input_ids"]
    if len(ids) < 2:
        raise InputError("The text needs at least two tokens to measure perplexity: paste or upload more text.")
    return ids


def scored_bytes(tokenizer, text: str, n_tokens: int) -> int:
    """UTF-8 bytes of the text covered by tokens 1..n_tokens-1 (the scored ones)."""
    try:
        offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"][:n_tokens]
    except (NotImplementedError, ValueError, TypeError):  # slow tokenizers have no offsets
        return len(tokenizer.decode(tokenizer(text)["input_ids"][1:n_tokens], skip_special_tokens=True).encode())
    return len(text[offsets[1][0]:offsets[-1][1]].encode("utf-8"))


def window_length(max_length: int, model_context: int | None) -> int:
    """Tokens a window reads: the requested length, or less when the model attends to fewer positions."""
    return min(max_length, model_context) if model_context else max_length


def encode(model, tokenizer, text: str) -> torch.Tensor:
    """Token ids of the text (1 x n) on the model's device."""
    return torch.tensor([text_ids(tokenizer, text)], device=next(model.parameters()).device)


@torch.no_grad()
def scored_windows(model, ids: torch.Tensor, max_length: int = 512, stride: int = 256
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(fp32 logits, target ids) for the tokens each window scores, for a model held in memory."""
    length = window_length(max_length, getattr(model.config, "max_position_embeddings", None))
    for w in plan_windows(ids.shape[1], length, stride):
        logits = model(ids[:, w.begin:w.end]).logits[0, w.first - w.begin - 1:-1].float()
        yield logits, ids[0, w.first:w.end]


def perplexity(model, tokenizer, text: str, max_length: int = 512, stride: int = 256) -> PerplexityResult:
    """exp(mean negative log-likelihood) over every token of the text after the first."""
    ids = encode(model, tokenizer, text)
    nll_sum, scored, windows = 0.0, 0, 0
    for logits, targets in scored_windows(model, ids, max_length, stride):
        nll_sum += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        scored += targets.numel()
        windows += 1
    length = window_length(max_length, getattr(model.config, "max_position_embeddings", None))
    return PerplexityResult.of(nll_sum, scored, windows, scored_bytes(tokenizer, text, ids.shape[1]), length,
                               window_stride(stride, length))


def windowed_perplexity(run: Run, ids: list[int], max_length: int, stride: int, n_bytes: int = 0,
                        limits: BatchLimits = BatchLimits(), progress: Callable[[float, str], None] | None = None,
                        stop: StopFlag | None = None) -> PerplexityResult:
    """The sliding-window perplexity above through any backend: `run` is an engine's `exclusive`, or
    `lambda job: job(backend)` for a backend that serves no one yet (an export being measured)."""
    windows = plan_windows(len(ids), max_length, stride)
    requests = [ScoreRequest(tuple(ids[w.begin:w.end]), w.first - w.begin) for w in windows]
    scores = score_requests(run, requests, 0, limits, progress, stop, "windows")
    return PerplexityResult.of(-sum(s.total for s in scores), sum(len(s.logprobs) for s in scores), len(windows),
                               n_bytes, max_length, window_stride(stride, max_length))
