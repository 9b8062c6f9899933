"""Perplexity of a causal LM on a text, with the sliding-window method of the transformers guide."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    mean_nll: float  # nats per predicted token
    tokens: int  # tokens scored
    windows: int


@torch.no_grad()
def perplexity(model, tokenizer, text: str, max_length: int = 512, stride: int = 256) -> PerplexityResult:
    """Each window scores only the tokens the previous window did not, conditioned on up to max_length context."""
    ids = tokenizer(text, return_tensors="pt").input_ids.to(next(model.parameters()).device)
    if ids.shape[1] < 2:
        raise ValueError("the text needs at least two tokens to measure perplexity")
    max_length = min(max_length, getattr(model.config, "max_position_embeddings", max_length) or max_length)
    stride = min(stride, max_length)
    nll_sum, scored, windows, prev_end = 0.0, 0, 0, 0
    for begin in range(0, ids.shape[1], stride):
        end = min(begin + max_length, ids.shape[1])
        window = ids[:, begin:end]
        target = window.clone()
        target[:, : -(end - prev_end)] = -100  # context only: already scored by the previous window
        logits = model(window).logits[:, :-1].float()
        labels = target[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                 ignore_index=-100, reduction="sum")
        nll_sum += loss.item()
        scored += int((labels != -100).sum())
        windows += 1
        prev_end = end
        if end == ids.shape[1]:
            break
    mean = nll_sum / scored
    return PerplexityResult(math.exp(mean), mean, scored, windows)
