"""What the model thought at each generated token: its probability and the top alternatives.

The engine records ids and probabilities only (cheap inside the decode loop); text is decoded here, when a reply is
shown (ui/chat_view.py renders it).
"""
from __future__ import annotations

from dataclasses import dataclass

TOP_K = 5


@dataclass(frozen=True)
class TokenStep:
    token_id: int
    prob: float  # probability the model gave the chosen token (softmax of raw logits)
    alt_ids: tuple[int, ...]  # the model's TOP_K most likely tokens at this step, best first
    alt_probs: tuple[float, ...]


@dataclass(frozen=True)
class TokenChoice:
    text: str
    prob: float


@dataclass(frozen=True)
class TokenInfo:
    text: str
    prob: float
    alternatives: tuple[TokenChoice, ...]


def describe_steps(tokenizer, steps: list[TokenStep]) -> list[TokenInfo]:
    """Decode every chosen and alternative token once (one batch call for all of them)."""
    ids = [s.token_id for s in steps] + [i for s in steps for i in s.alt_ids]
    texts = dict(zip(ids, tokenizer.batch_decode([[i] for i in ids])))
    return [TokenInfo(texts[s.token_id], s.prob, tuple(TokenChoice(texts[i], p) for i, p in zip(s.alt_ids, s.alt_probs)))
            for s in steps]
