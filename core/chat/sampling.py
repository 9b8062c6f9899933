"""Sampling settings as users give them, and the distribution after each stage the engine applies, for teaching.

The engine's own sampler (core/chat/sampler.py) does the work; `stages` runs its stage functions on one row and
records the distribution after each one, so the Sampling step-through shows exactly what the engine drew from.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from core.common.errors import check_number

# (field, label, low, high, whole number): what SamplingSettings accepts
SETTING_RANGES = (("temperature", "Temperature", 0, 5, False), ("top_k", "Top-k", 0, 100_000, True),
                  ("top_p", "Top-p", 1e-6, 1, False), ("min_p", "Min-p", 0, 1, False),
                  ("repetition_penalty", "Repetition penalty", 0.5, 5, False),
                  ("max_new_tokens", "Max new tokens", 1, 100_000, True), ("seed", "Seed", -1, 2**63 - 1, True))
# (low, high) of the Chat page's sliders, narrower than what the engine and the API accept: the page builds its
# sliders from these, and a lesson link is checked against them, so every value a link sets fits its slider. Max
# new tokens stops at the server's cap (Settings.max_new_tokens); the seed box takes SETTING_RANGES' seeds.
SLIDER_RANGES = {"temperature": (0, 2), "top_k": (0, 200), "top_p": (0.05, 1), "min_p": (0, 0.5),
                 "repetition_penalty": (1, 2)}


def control_range(name: str, max_new_tokens: int) -> tuple[str, float, float, bool]:
    """(label, low, high, whole number) of the Chat page's control for setting `name`, under the server's cap."""
    label, low, high, integer = next(r[1:] for r in SETTING_RANGES if r[0] == name)
    low, high = SLIDER_RANGES.get(name, (low, max_new_tokens if name == "max_new_tokens" else high))
    return label, low, high, integer


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 0.7  # 0 means greedy
    top_k: int = 50  # 0 turns it off
    top_p: float = 0.95  # 1 turns it off
    min_p: float = 0.0  # 0 turns it off
    repetition_penalty: float = 1.1  # 1 turns it off
    max_new_tokens: int = 256
    seed: int | None = None  # None or negative: a fresh random seed, reported in the stats

    def __post_init__(self) -> None:
        """Numbers from a slider, an API call or a lesson link: each within range, or an InputError naming it."""
        for name, label, low, high, integer in SETTING_RANGES:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check_number(label, value, low, high, integer))

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


# ---- sampling, step by step (for teaching) ------------------------------------------------------------------------
class StageName(str, enum.Enum):
    RAW = "raw"
    PENALTY = "penalty"
    TEMPERATURE = "temperature"
    TOP_K = "top_k"
    TOP_P = "top_p"
    MIN_P = "min_p"


@dataclass(frozen=True)
class Stage:
    """The next-token distribution after one processing stage, as the engine applies them."""

    name: StageName
    value: float | None  # the setting applied at this stage (None for the raw output)
    token_ids: tuple[int, ...]  # the most likely tokens after this stage, best first
    probs: tuple[float, ...]
    candidates: int  # tokens still possible (probability above zero)


def _whole(name: StageName, value: float | None, scores: torch.Tensor, top: int) -> Stage:
    probs = torch.softmax(scores[0], dim=-1)
    best = probs.topk(min(top, probs.numel()))
    return Stage(name, value, tuple(best.indices.tolist()), tuple(best.values.tolist()), int((probs > 0).sum()))


def stages(settings: SamplingSettings, history_ids: list[int], logits: torch.Tensor, top: int = 20) -> list[Stage]:
    """The distribution after each of the engine's stages, in the engine's order, from the raw logits: the last stage
    is exactly what the engine draws from (greedy decoding takes its most likely token instead of drawing)."""
    from core.chat.sampler import Knobs, RowSampler, candidates, penalise, truncate

    row = RowSampler(settings, history_ids)
    scores = logits.float().reshape(1, -1)
    result = [_whole(StageName.RAW, None, scores, top)]
    scores = penalise(scores, [row])
    if row.penalised:
        result.append(_whole(StageName.PENALTY, settings.repetition_penalty, scores, top))
    if settings.greedy:
        return result
    if settings.temperature != 1.0:
        result.append(_whole(StageName.TEMPERATURE, settings.temperature, scores / settings.temperature, top))
    knobs = Knobs.of([row])
    values = {StageName.TOP_K: settings.top_k, StageName.TOP_P: settings.top_p, StageName.MIN_P: settings.min_p}
    for full in (False, True):  # the engine's path: a short candidate list, and a full sort when that held too little
        truncating: list[Stage] = []

        def seen(name: str, c) -> None:
            probs = torch.softmax(c.scores[0], dim=-1)
            best = probs.topk(min(top, probs.numel()))
            truncating.append(Stage(StageName(name), values[StageName(name)], tuple(c.ids[0, best.indices].tolist()),
                                    tuple(best.values.tolist()), int(c.scores[0].isfinite().sum())))

        if not bool(truncate(candidates(scores, knobs, full=full), knobs, seen).any()):
            break
    return result + truncating
