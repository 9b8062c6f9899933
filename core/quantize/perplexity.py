"""Perplexity of a causal LM on a text, with the sliding-window method of the transformers guide."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch

from core.common.errors import InputError


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    mean_nll: float  # nats per predicted token
    tokens: int  # tokens scored
    windows: int


def encode(model, tokenizer, text: str) -> torch.Tensor:
    """Token ids of the text (1 x n) on the model's device."""
    ids = tokenizer(text, return_tensors="pt").input_ids.to(next(model.parameters()).device)
    if ids.shape[1] < 2:
        raise InputError("the text needs at least two tokens to measure perplexity")
    return ids


@torch.no_grad()
def scored_windows(model, ids: torch.Tensor, max_length: int = 512, stride: int = 256
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(fp32 logits, target ids) for the tokens each window scores: the ones the previous window did not,
    each predicted from up to max_length tokens of context. Every token after the first is scored once."""
    max_length = min(max_length, getattr(model.config, "max_position_embeddings", max_length) or max_length)
    stride = min(stride, max_length)
    prev_end = 0
    for begin in range(0, ids.shape[1], stride):
        end = min(begin + max_length, ids.shape[1])
        window = ids[:, begin:end]
        new = min(end - prev_end, window.shape[1] - 1)  # the window's first token has no prediction
        logits = model(window).logits[0, -new - 1:-1].float()
        yield logits, window[0, -new:]
        prev_end = end
        if end == ids.shape[1]:
            break


def perplexity(model, tokenizer, text: str, max_length: int = 512, stride: int = 256) -> PerplexityResult:
    """exp(mean negative log-likelihood) over every token of the text after the first."""
    nll_sum, scored, windows = 0.0, 0, 0
    for logits, targets in scored_windows(model, encode(model, tokenizer, text), max_length, stride):
        nll_sum += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        scored += targets.numel()
        windows += 1
    mean = nll_sum / scored
    return PerplexityResult(math.exp(mean), mean, scored, windows)
