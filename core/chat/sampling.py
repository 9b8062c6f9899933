"""How the next token is chosen from a model's logits: the settings, the processors, and one request's sampler.

The processors are transformers' own (repetition penalty, temperature, top-k, top-p, min-p, in the order
`generate` applies them), so greedy replies equal `generate(do_sample=False)` and a seed gives the same
reply as `torch.manual_seed(seed)` followed by `generate(do_sample=True)`. Each request samples with its
own seeded generator, whatever else runs in the same batch, and records what the model believed at each
step (the token view) from the raw logits before the settings reshape them.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from transformers import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from core.chat.token_view import TOP_K, TokenStep
from core.common.errors import check_number

# (field, label, low, high, whole number): what SamplingSettings accepts
SETTING_RANGES = (("temperature", "Temperature", 0, 5, False), ("top_k", "Top-k", 0, 100_000, True),
                  ("top_p", "Top-p", 1e-6, 1, False), ("min_p", "Min-p", 0, 1, False),
                  ("repetition_penalty", "Repetition penalty", 0.5, 5, False),
                  ("max_new_tokens", "Max new tokens", 1, 100_000, True), ("seed", "Seed", -1, 2**63 - 1, True))


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


def logits_processors(settings: SamplingSettings) -> LogitsProcessorList:
    """The processors `generate` would build for these settings, in the same order."""
    processors = LogitsProcessorList()
    if settings.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
    if settings.greedy:  # generate applies the warpers below only when sampling
        return processors
    if settings.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(settings.temperature))
    if settings.top_k:
        processors.append(TopKLogitsWarper(settings.top_k))
    if settings.top_p < 1.0:
        processors.append(TopPLogitsWarper(settings.top_p))
    if settings.min_p > 0:
        processors.append(MinPLogitsWarper(settings.min_p))
    return processors


def resolve_seed(seed: int | None) -> int:
    return seed if seed is not None and seed >= 0 else random.randrange(2**31)


def token_step(logits: torch.Tensor, token: int) -> TokenStep:
    """The model's own (unprocessed) probabilities: what it believed, before sampling settings reshaped them."""
    probs = torch.softmax(logits.float(), dim=-1)
    top = probs.topk(TOP_K)
    return TokenStep(token, float(probs[token]), tuple(top.indices.tolist()), tuple(top.values.tolist()))


class RequestSampler:
    """One request's token choice: its processors, its history of ids (for the repetition penalty), its seed."""

    def __init__(self, settings: SamplingSettings, prompt_ids: list[int]):
        self.settings = settings
        self.processors = logits_processors(settings)
        self.seed = None if settings.greedy else resolve_seed(settings.seed)
        self.generator = None if settings.greedy else torch.Generator().manual_seed(self.seed)
        self.ids = torch.tensor([prompt_ids], dtype=torch.long)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution's logits after every processor (the last stage before the draw), shape (1, vocab)."""
        row = logits.float().reshape(1, -1)
        return self.processors(self.ids, row) if self.processors else row

    def choose(self, logits: torch.Tensor) -> int:
        """Pick the next token from one row of raw logits and remember it."""
        scores = self.scores(logits)
        if self.settings.greedy:
            token = int(scores.argmax(dim=-1))
        else:
            token = int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=self.generator))
        self.ids = torch.cat([self.ids, torch.tensor([[token]])], dim=-1)
        return token


# ---- sampling, step by step (for teaching) ------------------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    """The next-token distribution after one processing stage, as the engine applies them."""

    name: str
    token_ids: tuple[int, ...]  # the most likely tokens after this stage, best first
    probs: tuple[float, ...]
    candidates: int  # tokens still possible (probability above zero)


def _stage(name: str, scores: torch.Tensor, top: int) -> Stage:
    probs = torch.softmax(scores[0].float(), dim=-1)
    best = probs.topk(min(top, probs.numel()))
    return Stage(name, tuple(best.indices.tolist()), tuple(best.values.tolist()), int((probs > 0).sum()))


def _stage_name(processor) -> str:
    names = {"RepetitionPenaltyLogitsProcessor": ("repetition penalty", "penalty"),
             "TemperatureLogitsWarper": ("temperature", "temperature"), "TopKLogitsWarper": ("top-k", "top_k"),
             "TopPLogitsWarper": ("top-p", "top_p"), "MinPLogitsWarper": ("min-p", "min_p")}
    label, attribute = names.get(type(processor).__name__, (type(processor).__name__, None))
    value = getattr(processor, attribute, None) if attribute else None
    return f"after {label} {value:g}" if isinstance(value, (int, float)) else f"after {label}"


def stages(settings: SamplingSettings, history_ids: list[int], logits: torch.Tensor, top: int = 20) -> list[Stage]:
    """The distribution after each of the engine's processors, in the engine's order, starting from the raw logits.

    The last stage is exactly what the engine draws from (RequestSampler.scores); greedy decoding then takes its
    most likely token instead of drawing."""
    ids = torch.tensor([history_ids], dtype=torch.long)
    scores = logits.float().reshape(1, -1)
    result = [_stage("raw model output", scores, top)]
    for processor in logits_processors(settings):
        scores = processor(ids, scores)
        result.append(_stage(_stage_name(processor), scores, top))
    return result
