"""Does a faster runtime or precision answer like the fp32 model? The measurements behind the runtime choice.

Three checks, each against fp32 PyTorch:
- next-token agreement on a probe text, and perplexity on assets/eval_text.txt measured as the Evaluate and Quantize
  tabs measure it (core/evaluate/perplexity.py: 512-token windows, stride 256), so all three show one number
  (teacher forced: every position sees the true text before it);
- a generation check: the team's short questions (assets/generation_check.json, the "choose" half), each with and
  without the default system prompt, answered greedily. Teacher forcing alone missed a garbled answer (98 %
  agreement, yet "What is the capital of France?" drew "L'Étoile, la Cité…" from an int8 export): after one early
  divergence, greedy generation wanders off and never comes back. A variant passes only if it keeps every right
  answer of fp32's (an answer counts when one of its words appears in the reply). Exact equality of whole replies
  would be too strict (a harmless near-tie changes every word after it) and is reported only as a figure;
  agreement on fp32's wrong answers does not matter, since a user is not served by keeping a mistake.
- speed: greedy decode steps at one and at eight requests, with the Chat tab's default sampling, as users run it.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from core.chat.backends import Backend
from core.chat.prompting import DEFAULT_SYSTEM_PROMPT, build_prompt
from core.chat.sampler import BatchSampler, RowSampler
from core.chat.sampling import SamplingSettings
from core.evaluate.perplexity import scored_bytes, text_ids, window_length, windowed_perplexity
from core.models.manager import Fp32Figures
from core.models.paths import assets_dir
from core.models.precision import probe_ids

MIN_AGREEMENT = 0.90
MAX_PERPLEXITY_RATIO = 1.03
WINDOW, STRIDE = 512, 256  # the Evaluate tab's defaults
CHECK_TOKENS = 40  # long enough for every right answer of fp32's on the check questions
SPEED_TOKENS, SPEED_BATCH = 16, 8
GREEDY = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=CHECK_TOKENS)


# ---- the generation check --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckQuestion:
    question: str
    answers: tuple[str, ...]

    def answered(self, reply: str) -> bool:
        return any(re.search(rf"(?<!\w){re.escape(a.lower())}(?!\w)", reply.lower()) for a in self.answers)


def check_questions(split: str = "choose") -> list[CheckQuestion]:
    """The team's questions: "choose" (what the runtime choice asks) or "report" (held out for benchmarks)."""
    data = json.loads((assets_dir() / "generation_check.json").read_text(encoding="utf-8"))
    return [CheckQuestion(q["question"], tuple(q["answers"])) for q in data[split]]


@dataclass(frozen=True)
class GenerationCheck:
    """How a variant's greedy replies compare with fp32's on the check questions."""

    asked: int  # replies compared (questions x with and without a system prompt)
    fp32_right: int  # fp32 replies that give the right answer
    kept: int  # of those, the variant's replies that give it too
    identical: int  # replies word for word equal to fp32's

    @property
    def passed(self) -> bool:
        return self.kept == self.fp32_right

    @classmethod
    def of(cls, questions: list[CheckQuestion], fp32: list[str], variant: list[str]) -> GenerationCheck:
        asked = [q for q in questions for _ in (0, 1)]  # each with and without the system prompt
        right = [q.answered(a) for q, a in zip(asked, fp32)]
        kept = sum(r and q.answered(v) for q, r, v in zip(asked, right, variant))
        return cls(len(asked), sum(right), kept, sum(a == v for a, v in zip(fp32, variant)))


def greedy_replies(backend: Backend, tokenizer, eos_ids: set[int], is_chat: bool,
                   questions: list[CheckQuestion]) -> list[str]:
    """Each question with the default system prompt and without one, answered greedily, all in one batch."""
    from core.chat.engine import ChatEngine

    engine = ChatEngine(backend, tokenizer, eos_ids)
    try:
        handles = []
        for question in questions:
            for system in (DEFAULT_SYSTEM_PROMPT, ""):
                prompt = build_prompt(tokenizer, [], question.question, use_template=is_chat, system=system,
                                      context=backend.context, max_new_tokens=CHECK_TOKENS)
                handles.append(engine.submit(prompt.input_ids, GREEDY, stop_strings=prompt.stop_strings,
                                             record_steps=False))
        return [h.result().text for h in handles]
    finally:
        engine.close()


# ---- speed ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Speed:
    """Decode tokens/s with the Chat tab's default sampling: one request, and SPEED_BATCH at once (aggregate)."""

    alone: float
    batched: float

    @property
    def seconds(self) -> float:
        """What ranks candidates: one step for one user plus one step for a batch (a mix of quiet and busy)."""
        return 1 / self.alone + SPEED_BATCH / self.batched


def _steps(backend: Backend, prompt: list[int], rows: int) -> float:
    """Tokens/s of SPEED_TOKENS decode steps for `rows` requests, each step sampled as the engine samples."""
    logits, prefilled = backend.read([prompt] * rows)
    store, sampler = backend.new_store(), BatchSampler()
    samplers = [RowSampler(SamplingSettings(seed=row), prompt) for row in range(rows)]
    for row, one in enumerate(prefilled):
        store.add(row, one)
    tokens = [s.token for s in sampler.sample(logits, samplers)]
    start = time.perf_counter()
    for _ in range(SPEED_TOKENS):
        tokens = [s.token for s in sampler.sample(store.decode(tokens), samplers)]
    return rows * SPEED_TOKENS / (time.perf_counter() - start)


def measure_speed(backend: Backend, prompt: list[int]) -> Speed:
    """The best of a few rounds each (after a warm-up: first runs pay one-off costs): the cores are shared, and
    noise only ever makes a round slower."""
    _steps(backend, prompt, 1)
    return Speed(max(_steps(backend, prompt, 1) for _ in range(3)), max(_steps(backend, prompt, SPEED_BATCH)
                                                                         for _ in range(2)))


# ---- teacher-forced quality and the whole verdict ----------------------------------------------------------------
def text_perplexity(backend: Backend, tokenizer) -> float:
    """Perplexity of assets/eval_text.txt, as the Evaluate and Quantize tabs compute it."""
    text = (assets_dir() / "eval_text.txt").read_text(encoding="utf-8")
    ids = text_ids(tokenizer, text)
    return windowed_perplexity(lambda job: job(backend), ids, window_length(WINDOW, backend.context), STRIDE,
                               scored_bytes(tokenizer, text, len(ids))).perplexity


@dataclass(frozen=True)
class Quality:
    """How closely a served model predicts and answers like the fp32 model, and how fast it is."""

    agreement: float  # share of next-token predictions equal to fp32's on the probe text
    perplexity: float  # of assets/eval_text.txt (text_perplexity)
    fp32_perplexity: float
    decode_tok_s: float = 0.0  # one request, the Chat tab's default sampling
    batch_tok_s: float = 0.0  # SPEED_BATCH requests at once, aggregate
    generation: GenerationCheck | None = None  # None: not run (the teacher-forced checks already failed)
    carried: Fp32Figures | None = None  # figures measured where the variant was made (never stored in the memo)

    @property
    def teacher_forced_ok(self) -> bool:
        return self.agreement >= MIN_AGREEMENT and self.perplexity <= self.fp32_perplexity * MAX_PERPLEXITY_RATIO

    @property
    def kept(self) -> bool:
        return self.teacher_forced_ok and self.generation is not None and self.generation.passed

    def as_dict(self) -> dict:
        values = {k: getattr(self, k) for k in ("agreement", "perplexity", "fp32_perplexity", "decode_tok_s",
                                                "batch_tok_s")}
        return values | {"generation": self.generation.__dict__ if self.generation else None}

    @classmethod
    def from_dict(cls, values: dict) -> Quality:
        generation = values.get("generation")
        return cls(**{**values, "generation": GenerationCheck(**generation) if generation else None})


@dataclass
class Reference:
    """What the fp32 model predicts and answers: the yardstick for every faster runtime or precision."""

    probe: list[int]
    probe_argmax: torch.Tensor
    perplexity: float
    replies: list[str] = field(default_factory=list)  # greedy answers to the check questions
    questions: list[CheckQuestion] = field(default_factory=list)

    @classmethod
    def of(cls, backend: Backend, tokenizer, eos_ids: set[int], is_chat: bool) -> Reference:
        probe, questions = probe_ids(tokenizer)[0].tolist(), check_questions()
        return cls(probe, backend.full_logits(probe).argmax(-1), text_perplexity(backend, tokenizer),
                   greedy_replies(backend, tokenizer, eos_ids, is_chat, questions), questions)

    def measure(self, backend: Backend, tokenizer, eos_ids: set[int], is_chat: bool,
                progress: Callable[[str], None] = lambda _: None) -> Quality:
        """Teacher-forced checks first; the generation check only for a variant that passes them."""
        agreement = float((backend.full_logits(self.probe).argmax(-1) == self.probe_argmax).float().mean())
        quality = Quality(agreement, text_perplexity(backend, tokenizer), self.perplexity)
        if not quality.teacher_forced_ok:
            return quality
        progress("asking the check questions")
        replies = greedy_replies(backend, tokenizer, eos_ids, is_chat, self.questions)
        return Quality(quality.agreement, quality.perplexity, quality.fp32_perplexity,
                       generation=GenerationCheck.of(self.questions, self.replies, replies))
