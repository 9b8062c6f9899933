"""Choosing the next token for every running request in one vectorised pass, each row with its own settings and seed.

The stages are `generate`'s, in its order: repetition penalty, temperature, top-k, top-p, min-p (transformers'
`RepetitionPenaltyLogitsProcessor`, `TemperatureLogitsWarper`, `TopKLogitsWarper`, `TopPLogitsWarper`,
`MinPLogitsWarper`), so greedy replies equal `generate(do_sample=False)` and the distribution a reply is drawn from is
the one `generate(do_sample=True)` would draw from (tests/test_sampler.py compares both with transformers').

What makes it cheap: the truncating stages work on a short list of candidates instead of the whole vocabulary.
With top-k, the candidates are the k likeliest tokens (temperature does not change which, so only they are divided
by it). Without it, top-p and min-p look at the CANDIDATES likeliest tokens first, which provably hold their answer
when the tokens left out carry at most 1 - top_p of the probability (for min-p: when the last candidate is already
below the cut); only otherwise is the whole row sorted. Stages no row uses are skipped. The draw is one seeded
uniform number per row against the kept tokens' cumulative probabilities in token-id order (inverse transform),
instead of `torch.multinomial`'s exponential race over the whole vocabulary (about 3 ms a row here): a seed
therefore gives the same reply alone or in a batch, but not the same reply as `generate(do_sample=True)` after
`torch.manual_seed(seed)` (a draw from the same distribution with other random numbers). The token view's top-5
and the chosen token's probability come from the same pass, from the raw logits.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from core.chat.sampling import SamplingSettings
from core.chat.token_view import TOP_K
from core.chat.types import Sampled

CANDIDATES = 1024  # tried before a full sort when top-p or min-p runs without top-k
NEG_INF = float("-inf")
Seen = Callable[[str, "Candidates"], None]


def resolve_seed(seed: int | None) -> int:
    return seed if seed is not None and seed >= 0 else random.randrange(2**31)


class RowSampler:
    """One request's sampling state: its settings, its seeded random numbers and the ids it has seen (for the
    repetition penalty, kept in a growing buffer so a step appends one id instead of rebuilding the list)."""

    def __init__(self, settings: SamplingSettings, prompt_ids: Sequence[int]):
        self.settings = settings
        self.seed = None if settings.greedy else resolve_seed(settings.seed)
        self.random = random.Random(self.seed)
        self.penalised = settings.repetition_penalty != 1.0
        self._seen = set(prompt_ids) if self.penalised else set()
        self._ids = torch.tensor(sorted(self._seen) + [0] * 64, dtype=torch.long)
        self._count = len(self._seen)

    @property
    def seen(self) -> torch.Tensor:
        return self._ids[:self._count]

    def remember(self, token: int) -> None:
        if not self.penalised or token in self._seen:
            return
        self._seen.add(token)
        if self._count == len(self._ids):
            self._ids = torch.cat([self._ids, torch.zeros_like(self._ids)])
        self._ids[self._count] = token
        self._count += 1


@dataclass
class Knobs:
    """A batch's settings as tensors, built once per step, and which stages any row uses."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    min_p: torch.Tensor

    @classmethod
    def of(cls, rows: Sequence[RowSampler]) -> Knobs:
        s = [r.settings for r in rows]
        return cls(torch.tensor([x.temperature for x in s]), torch.tensor([x.top_k for x in s], dtype=torch.long),
                   torch.tensor([x.top_p for x in s]), torch.tensor([x.min_p for x in s]))

    def __post_init__(self) -> None:
        self.any_top_k, self.all_top_k = bool((self.top_k > 0).any()), bool((self.top_k > 0).all())
        self.any_top_p, self.any_min_p = bool((self.top_p < 1).any()), bool((self.min_p > 0).any())
        self.truncating = self.any_top_k or self.any_top_p or self.any_min_p

    def rows(self, index: torch.Tensor) -> Knobs:
        return Knobs(self.temperature[index], self.top_k[index], self.top_p[index], self.min_p[index])


# ---- the stages --------------------------------------------------------------------------------------------------
def penalise(raw: torch.Tensor, rows: Sequence[RowSampler]) -> torch.Tensor:
    """transformers' repetition penalty: a seen token's logit is divided by the penalty if positive, else multiplied.
    One gather and one scatter for the whole batch; rows without a penalty write their own values back."""
    if not any(r.penalised and len(r.seen) for r in rows):
        return raw
    seen = torch.nn.utils.rnn.pad_sequence([r.seen if r.penalised else r.seen[:0] for r in rows], batch_first=True,
                                           padding_value=-1)
    padded = seen < 0
    seen = torch.where(padded, seen[:, :1].clamp(min=0), seen)  # padding repeats the row's first id: same value
    penalty = torch.tensor([r.settings.repetition_penalty if r.penalised and len(r.seen) else 1.0 for r in rows])
    scores = raw.clone()
    picked = scores.gather(1, seen)
    picked = torch.where(picked < 0, picked * penalty[:, None], picked / penalty[:, None])
    return scores.scatter_(1, seen, picked)


@dataclass
class Candidates:
    """Each row's candidate tokens, likeliest first (or the whole vocabulary in index order when nothing truncates),
    with their tempered scores; truncated candidates have score -inf. `log_tail` is the log of the probability mass
    outside the candidates (-inf when none is left out), used to check that the candidates hold the answer."""

    scores: torch.Tensor  # (rows, width)
    ids: torch.Tensor  # (rows, width)
    log_tail: torch.Tensor  # (rows,)
    in_id_order: bool = False  # the whole vocabulary, unsorted


def candidates(scores: torch.Tensor, knobs: Knobs, full: bool = False) -> Candidates:
    """Each row's likeliest tokens, tempered, as many as its truncation needs (all of them, sorted, when `full`)."""
    vocab, rows = scores.shape[1], scores.shape[0]
    no_tail = torch.full((rows,), NEG_INF)
    if not knobs.truncating:  # plain sampling: the whole vocabulary as it is, no sort needed
        return Candidates(scores / knobs.temperature[:, None], torch.arange(vocab).expand(rows, vocab), no_tail, True)
    most_k = int(knobs.top_k.max())
    width = vocab if full else min(vocab, most_k if knobs.all_top_k else max(most_k, CANDIDATES))
    if width == vocab:
        tempered, ids = (scores / knobs.temperature[:, None]).sort(dim=1, descending=True)
        return Candidates(tempered, ids, no_tail)
    best, ids = scores.topk(width, dim=1)
    tempered = best / knobs.temperature[:, None]
    if knobs.all_top_k:  # top-k keeps no more than these: the mass left out does not matter
        return Candidates(tempered, ids, no_tail)
    log_total = torch.logsumexp(scores / knobs.temperature[:, None], dim=1)
    held = (torch.logsumexp(tempered, dim=1) - log_total).exp().clamp(max=1.0)
    return Candidates(tempered, ids, log_total + torch.log1p(-held))


def top_k_stage(c: Candidates, ks: torch.Tensor) -> None:
    """Keep each row's k likeliest (k = 0: all); the candidates are sorted, so that is the first k columns."""
    limit = torch.where(ks > 0, ks, c.scores.shape[1])
    c.scores.masked_fill_(torch.arange(c.scores.shape[1])[None, :] >= limit[:, None], NEG_INF)
    c.log_tail.masked_fill_(ks > 0, NEG_INF)


def _probs(c: Candidates) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidates' probabilities under the whole row's distribution, and the mass outside them."""
    log_total = torch.logaddexp(torch.logsumexp(c.scores, dim=1), c.log_tail)
    return (c.scores - log_total[:, None]).exp(), (c.log_tail - log_total).exp()


def top_p_stage(c: Candidates, ps: torch.Tensor) -> torch.Tensor:
    """transformers' top-p: drop a token when the mass of the tokens less likely than it, itself included, is at most
    1 - top_p (summed from the least likely up, as transformers does). Returns the rows whose candidates may not hold
    the answer (the tokens left out carry more than 1 - top_p)."""
    probs, tail = _probs(c)
    ascending = probs.flip(1).cumsum(1).flip(1) + tail[:, None]
    drop = ascending <= (1 - ps)[:, None]
    drop[:, 0] = False  # min_tokens_to_keep = 1
    c.scores.masked_fill_(drop & (ps < 1)[:, None], NEG_INF)
    c.log_tail.masked_fill_(ps < 1, NEG_INF)
    return (ps < 1) & (tail > 1 - ps)


def min_p_stage(c: Candidates, mins: torch.Tensor) -> torch.Tensor:
    """transformers' min-p: drop tokens less likely than min_p times the likeliest. Returns the rows whose left-out
    tokens could still pass (the last candidate is not below the cut)."""
    probs, _ = _probs(c)
    cut = mins * probs[:, 0]
    drop = probs < cut[:, None]
    drop[:, 0] = False
    c.scores.masked_fill_(drop & (mins > 0)[:, None], NEG_INF)
    short = (mins > 0) & c.log_tail.isfinite() & (probs[:, -1] >= cut)
    c.log_tail.masked_fill_(mins > 0, NEG_INF)
    return short


def truncate(c: Candidates, knobs: Knobs, seen: Seen | None = None) -> torch.Tensor:
    """Apply top-k, top-p and min-p in place (the stages some row uses); the rows whose candidates turned out too few
    (to redo in full). `seen(stage, candidates)` is called after each stage that ran (for the step-through)."""
    short = torch.zeros(c.scores.shape[0], dtype=torch.bool)
    for on, stage, name, values in ((knobs.any_top_k, top_k_stage, "top_k", knobs.top_k),
                                    (knobs.any_top_p, top_p_stage, "top_p", knobs.top_p),
                                    (knobs.any_min_p, min_p_stage, "min_p", knobs.min_p)):
        if on:
            found = stage(c, values)
            short = short | found if found is not None else short
            if seen is not None:
                seen(name, c)
    return short | c.log_tail.isfinite()  # a row no stage truncated (plain sampling beside rows that truncate)


def draw(c: Candidates, u: torch.Tensor) -> torch.Tensor:
    """One token per row: its uniform number u in [0, 1) against the kept tokens' cumulative probabilities, taken in
    token-id order, so the draw does not depend on how the candidates were found (top-k, a longer list or a sort)."""
    kept = c.scores.isfinite()
    scores, ids = c.scores, c.ids
    if not c.in_id_order:
        order = torch.where(kept, c.ids, torch.iinfo(torch.long).max).argsort(dim=1)[:, :int(kept.sum(1).max())]
        scores, ids = c.scores.gather(1, order), c.ids.gather(1, order)
    cumulative = torch.softmax(scores, dim=1).cumsum(1)
    column = torch.searchsorted(cumulative, u[:, None] * cumulative[:, -1:], right=True)
    last = kept.sum(1, keepdim=True) - 1  # u * total can round up to the total: the last kept token then
    return ids.gather(1, torch.minimum(column, last))[:, 0]


def truncated(scores: torch.Tensor, knobs: Knobs) -> list[tuple[torch.Tensor, Candidates]]:
    """The distribution each row draws from (after temperature, top-k, top-p, min-p), as (row indices, candidates)
    groups: the rows the short candidate lists answered, and the rows that needed the whole vocabulary sorted."""
    c = candidates(scores, knobs)
    short = truncate(c, knobs)
    if not bool(short.any()):
        return [(torch.arange(scores.shape[0]), c)]
    redo, done = short.nonzero()[:, 0], (~short).nonzero()[:, 0]
    full = candidates(scores[redo], knobs.rows(redo), full=True)
    truncate(full, knobs.rows(redo))
    first = Candidates(c.scores[done], c.ids[done], c.log_tail[done])
    return [(done, first), (redo, full)] if len(done) else [(redo, full)]


def sample_rows(scores: torch.Tensor, rows: Sequence[RowSampler]) -> torch.Tensor:
    """Tokens for rows that sample (temperature > 0), from their penalised scores; one uniform number per row."""
    u = torch.tensor([r.random.random() for r in rows])
    groups = truncated(scores, Knobs.of(rows))
    if len(groups) == 1:
        return draw(groups[0][1], u)
    tokens = torch.empty(len(rows), dtype=torch.long)
    for index, c in groups:
        tokens[index] = draw(c, u[index])
    return tokens


class BatchSampler:
    """Samples one step for every row at once; `rows[i]` holds row i's settings, seed and seen ids."""

    def sample(self, logits: torch.Tensor, rows: Sequence[RowSampler]) -> list[Sampled]:
        raw = logits.float()
        log_total = torch.logsumexp(raw, dim=1)
        top = raw.topk(min(TOP_K, raw.shape[1]), dim=1)
        scores = penalise(raw, rows)
        greedy = [r.settings.greedy for r in rows]
        if all(greedy):
            tokens = scores.argmax(dim=1)
        elif not any(greedy):
            tokens = sample_rows(scores, rows)
        else:
            tokens = scores.argmax(dim=1)
            drawn = torch.tensor([i for i, g in enumerate(greedy) if not g])
            tokens[drawn] = sample_rows(scores[drawn], [r for r, g in zip(rows, greedy) if not g])
        probs = (raw.gather(1, tokens[:, None])[:, 0] - log_total).exp()
        alt_ids, alt_probs = top.indices.tolist(), (top.values - log_total[:, None]).exp().tolist()
        out = []
        for row, token, prob, ids, ps in zip(rows, tokens.tolist(), probs.tolist(), alt_ids, alt_probs):
            row.remember(token)
            out.append(Sampled(token, prob, tuple(ids), tuple(ps)))
        return out
