"""The chat generation engine: a lean decode loop that streams a reply token by token.

Why not `model.generate`: at 135M parameters the per-token bookkeeping of `generate` costs
about as much as the forward pass itself on a CPU. This loop calls the model with its KV cache,
applies the same logits processors as `generate` (repetition penalty, temperature, top-k,
top-p, min-p, in that order) and samples with a per-request seeded generator, so greedy output
equals `generate(do_sample=False)` and a seed gives the same reply as `torch.manual_seed(seed)`
followed by `generate(do_sample=True)`. It checks the caller's stop flag after every token.
"""
from __future__ import annotations

import inspect
import random
import time
from dataclasses import dataclass, field, replace
from typing import Iterator

import torch
from transformers import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from core.chat.prompting import context_length
from core.chat.token_view import TOP_K, TokenStep
from core.common.errors import InputError, check_number
from core.common.stopping import StopFlag, StopOnFlag

# Why a reply ended, as shown to the user.
END_OF_TEXT, LENGTH, STOPPED, STOP_STRING = "end of text", "max new tokens", "stopped by user", "next turn started"


class GenerationError(InputError):
    """The request cannot be generated (e.g. the prompt fills the whole context)."""


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


@dataclass
class ReplyStats:
    tokens: int = 0
    seconds: float = 0.0
    first_token_s: float | None = None  # time to first token, prefill included
    decode_tokens_per_s: float | None = None  # tokens after the first, per second of decoding
    seed: int | None = None
    finish: str = ""  # empty while the reply is still streaming

    def describe(self) -> str:
        parts = [f"{self.tokens} token{'s' if self.tokens != 1 else ''}"]
        if self.decode_tokens_per_s is not None:
            parts.append(f"{self.decode_tokens_per_s:.1f} tok/s")
        if self.first_token_s is not None:
            parts.append(f"first token {self.first_token_s:.2f} s")
        if self.seed is not None:
            parts.append(f"seed {self.seed}")
        if self.finish:
            parts.append(self.finish)
        return " · ".join(parts)


@dataclass
class ReplyChunk:
    """The reply so far; the last chunk of a stream has `done` set, final stats and the token steps."""

    text: str
    stats: ReplyStats  # a snapshot: later tokens do not change it
    steps: list[TokenStep] = field(default_factory=list)
    done: bool = False


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


def eos_token_ids(model, tokenizer) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _accepts_logits_to_keep(model) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _resolve_seed(seed: int | None) -> int:
    return seed if seed is not None and seed >= 0 else random.randrange(2**31)


def stream_reply(model, tokenizer, prompt_ids: list[int], settings: SamplingSettings, stop_flag: StopFlag | None = None,
                 stop_strings: tuple[str, ...] = (), record_steps: bool = True) -> Iterator[ReplyChunk]:
    """Yield the reply after every token; the final chunk says why it ended.

    Grad mode is thread-local and gradio may resume a generator on another thread, so
    inference mode is entered around each forward pass rather than across the yields.
    """
    room = context_length(model, tokenizer) - len(prompt_ids)
    if room <= 0:
        raise GenerationError(f"The prompt has {len(prompt_ids):,} tokens and fills the model's whole context; "
                              "shorten the system prompt or the message.")
    device = _model_device(model)
    max_new = min(settings.max_new_tokens, room)
    processors = logits_processors(settings)
    stats = ReplyStats(seed=None if settings.greedy else _resolve_seed(settings.seed))
    sampler = None if settings.greedy else torch.Generator(device=device).manual_seed(stats.seed)
    stopping = StoppingCriteriaList([StopOnFlag(stop_flag or StopFlag())])
    eos = eos_token_ids(model, tokenizer)
    extra = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}

    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    step_input, past = ids, None
    generated: list[int] = []
    steps: list[TokenStep] = []
    text = ""
    start = time.perf_counter()
    first_at = start
    for n in range(max_new):
        with torch.inference_mode():
            out = model(input_ids=step_input, past_key_values=past, use_cache=True, **extra)
            past = out.past_key_values
            logits = out.logits[:, -1, :].float()
            scores = processors(ids, logits) if processors else logits
            if settings.greedy:
                token = scores.argmax(dim=-1)
            else:
                token = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=sampler).squeeze(1)
            if record_steps:
                steps.append(_token_step(logits, token))
            ids = torch.cat([ids, token[:, None]], dim=-1)
        token_id = int(token)
        if n == 0:
            first_at = time.perf_counter()
            stats.first_token_s = first_at - start
        if token_id in eos:
            stats.finish = END_OF_TEXT
            steps = steps[:-1] if record_steps else steps
            break
        generated.append(token_id)
        stats.tokens = len(generated)
        text = tokenizer.decode(generated, skip_special_tokens=True)
        cut = _find_stop(text, stop_strings)
        if cut is not None:
            text, stats.finish = text[:cut], STOP_STRING
            break
        if stopping(ids, scores).any():
            stats.finish = STOPPED
            break
        stats.seconds = time.perf_counter() - start
        # A token can end inside a multi-byte character: hold its replacement mark back until the rest arrives.
        yield ReplyChunk(text.rstrip("\ufffd"), replace(stats))
        step_input = token[:, None]
    else:
        stats.finish = LENGTH
    now = time.perf_counter()
    stats.seconds = now - start
    if len(generated) > 1:
        stats.decode_tokens_per_s = (len(generated) - 1) / max(now - first_at, 1e-9)
    yield ReplyChunk(text.rstrip() if stats.finish == STOP_STRING else text, stats, steps, done=True)


def _token_step(logits: torch.Tensor, token: torch.Tensor) -> TokenStep:
    """The model's own (unprocessed) probabilities: what it believed, before sampling settings reshaped them."""
    probs = torch.softmax(logits[0], dim=-1)
    top = probs.topk(TOP_K)
    return TokenStep(int(token), float(probs[int(token)]), tuple(top.indices.tolist()), tuple(top.values.tolist()))


def _find_stop(text: str, stop_strings: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    return min(hits) if hits else None


def generate_reply(model, tokenizer, prompt_ids: list[int], settings: SamplingSettings,
                   stop_flag: StopFlag | None = None, stop_strings: tuple[str, ...] = ()) -> ReplyChunk:
    """The whole reply at once (scripts, tests, the benchmark)."""
    chunk = None
    for chunk in stream_reply(model, tokenizer, prompt_ids, settings, stop_flag, stop_strings):
        pass
    return chunk
