"""Choosing the next token for every running request in one vectorised pass, each row with its own settings and seed.

The stages are `generate`'s, in its order: repetition penalty, temperature, top-k, top-p, min-p (transformers'
`RepetitionPenaltyLogitsProcessor`, `TemperatureLogitsWarper`, `TopKLogitsWarper`, `TopPLogitsWarper`,
`MinPLogitsWarper`), so greedy replies equal `generate(do_sample=False)` and the distribution a reply is drawn from is
the one `generate(do_sample=True)` would draw from (the tests compare both with transformers').

What makes it cheap: the truncating stages work on a short list of candidates instead of the whole vocabulary.
With top-k, the candidates are the k likeliest tokens. Without it, top-p and min-p look at the CANDIDATES likeliest
tokens first, which provably hold their answer when the tokens left out carry at most 1 - top_p of the probability
(for min-p: when the last candidate is already below the cut); only otherwise is the whole row sorted. The draw is one
seeded uniform number per row against the kept candidates' cumulative probabilities (inverse transform), instead of
`torch.multinomial`'s exponential race over the whole vocabulary: a seed therefore gives the same reply alone or in a
batch, but not the same reply as `generate(do_sample=True)` with `torch.manual_seed(seed)` (a draw from the same
distribution, with other random numbers). The token view's top-5 and the chosen token's probability come from the
same pass, from the raw logits.
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


def resolve_seed(seed: int | None) -> int:
    return seed if seed is not None and seed >= 0 else random.randrange(2**31)


class RowSampler:
    """One request's sampling state: its settings, its seeded generator and the ids it has seen (for the penalty)."""

    def __init__(self, settings: SamplingSettings, prompt_ids: Sequence[int]):
        self.settings = settings
        self.seed = None if settings.greedy else resolve_seed(settings.seed)
        self.generator = None if settings.greedy else torch.Generator().manual_seed(self.seed)
        self.penalised = settings.repetition_penalty != 1.0
        self._seen = set(prompt_ids) if self.penalised else set()
        self.seen = torch.tensor(sorted(self._seen), dtype=torch.long)

    def remember(self, token: int) -> None:
        if self.penalised and token not in self._seen:
            self._seen.add(token)
            self.seen = torch.cat([self.seen, torch.tensor([token])])

    def uniform(self) -> float:
        return float(torch.rand(1, generator=self.generator))


# ---- the stages, on a batch of rows ------------------------------------------------------------------------------
def penalise(raw: torch.Tensor, rows: Sequence[RowSampler]) -> torch.Tensor:
    """transformers' repetition penalty: a seen token's logit is divided by the penalty if positive, else multiplied."""
    which = [i for i, r in enumerate(rows) if r.penalised and len(r.seen)]
    if not which:
        return raw
    scores = raw.clone()
    seen = torch.nn.utils.rnn.pad_sequence([rows[i].seen for i in which], batch_first=True,
                                           padding_value=-1)
    pad = seen < 0
    seen = torch.where(pad, seen[:, :1], seen)  # a padded slot repeats the row's first seen id: same value written
    index = torch.tensor(which)
    penalty = torch.tensor([rows[i].settings.repetition_penalty for i in which])[:, None]
    picked = scores[index].gather(1, seen)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    scores[index] = scores[index].scatter(1, seen, picked)
    return scores


@dataclass
class Candidates:
    """Each row's candidate tokens, likeliest first (or the whole vocabulary in index order when nothing truncates),
    with their scores; truncated candidates have score -inf. `log_tail` is the log of the probability mass outside
    the candidates (-inf when they are the whole vocabulary), used to check that the candidates hold the answer."""

    scores: torch.Tensor  # (rows, width)
    ids: torch.Tensor  # (rows, width)
    log_tail: torch.Tensor  # (rows,)
    in_id_order: bool = False  # the whole vocabulary, unsorted


def top_k_stage(c: Candidates, ks: torch.Tensor) -> None:
    """Keep each row's k likeliest (k = 0: all); the candidates are sorted, so that is the first k columns."""
    limit = torch.where(ks > 0, ks, c.scores.shape[1])
    c.scores.masked_fill_(torch.arange(c.scores.shape[1])[None, :] >= limit[:, None], NEG_INF)
    c.log_tail = torch.where(ks > 0, torch.full_like(c.log_tail, NEG_INF), c.log_tail)


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
    short = (ps < 1) & (tail > 1 - ps)
    c.log_tail = torch.where(ps < 1, torch.full_like(c.log_tail, NEG_INF), c.log_tail)
    return short


def min_p_stage(c: Candidates, mins: torch.Tensor) -> torch.Tensor:
    """transformers' min-p: drop tokens less likely than min_p times the likeliest. Returns the rows whose left-out
    tokens could still pass (the last candidate is not below the cut)."""
    probs, _ = _probs(c)
    cut = mins * probs[:, 0]
    drop = probs < cut[:, None]
    drop[:, 0] = False
    c.scores.masked_fill_(drop & (mins > 0)[:, None], NEG_INF)
    short = (mins > 0) & c.log_tail.isfinite() & (probs[:, -1] >= cut)
    c.log_tail = torch.where(mins > 0, torch.full_like(c.log_tail, NEG_INF), c.log_tail)
    return short


def _settings(rows: Sequence[RowSampler], name: str, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor([getattr(r.settings, name) for r in rows], dtype=dtype)


def candidates(tempered: torch.Tensor, rows: Sequence[RowSampler], full: bool = False) -> Candidates:
    """Each row's likeliest tokens, as many as its truncation needs (all of them, sorted, when `full`)."""
    ks = _settings(rows, "top_k", torch.long)
    vocab = tempered.shape[1]
    no_tail = torch.full((len(rows),), NEG_INF)
    if not bool(((ks > 0) | (_settings(rows, "top_p") < 1) | (_settings(rows, "min_p") > 0)).any()):
        # plain sampling: the whole vocabulary as it is, no sort needed
        return Candidates(tempered.clone(), torch.arange(vocab).expand_as(tempered), no_tail, in_id_order=True)
    width = vocab if full else min(vocab, int(ks.max()) if bool((ks > 0).all()) else max(int(ks.max()), CANDIDATES))
    if width == vocab:
        scores, ids = tempered.sort(dim=1, descending=True)
        return Candidates(scores, ids, no_tail)
    scores, ids = tempered.topk(width, dim=1)
    if bool((ks > 0).all()):  # top-k keeps no more than these: the mass outside does not matter
        return Candidates(scores, ids, no_tail)
    log_total = torch.logsumexp(tempered, dim=1)
    outside = (torch.logsumexp(scores, dim=1) - log_total).exp().clamp(max=1.0)
    return Candidates(scores, ids, log_total + torch.log1p(-outside))


def truncate(c: Candidates, rows: Sequence[RowSampler], seen: Callable[[str, Candidates], None] | None = None
             ) -> torch.Tensor:
    """Apply top-k, top-p and min-p in place; the rows whose candidates turned out too few (to redo in full).
    `seen(stage, candidates)` is called after each stage that is on (the Sampling step-through shows them)."""
    look = seen or (lambda *_: None)
    ks, ps, mins = _settings(rows, "top_k", torch.long), _settings(rows, "top_p"), _settings(rows, "min_p")
    top_k_stage(c, ks)
    if bool((ks > 0).any()):
        look("top_k", c)
    short = top_p_stage(c, ps)
    if bool((ps < 1).any()):
        look("top_p", c)
    short |= min_p_stage(c, mins)
    if bool((mins > 0).any()):
        look("min_p", c)
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


def truncated(tempered: torch.Tensor, rows: Sequence[RowSampler]) -> list[tuple[torch.Tensor, Candidates]]:
    """The distribution each row draws from (after top-k, top-p, min-p), as (row indices, their candidates) groups:
    the rows the short candidate lists answered, and the rows that needed the whole vocabulary sorted."""
    c = candidates(tempered, rows)
    short = truncate(c, rows)
    if not bool(short.any()):
        return [(torch.arange(len(rows)), c)]
    redo, done = short.nonzero()[:, 0], (~short).nonzero()[:, 0]
    again = [rows[i] for i in redo.tolist()]
    full = candidates(tempered[redo], again, full=True)
    truncate(full, again)
    first = Candidates(c.scores[done], c.ids[done], c.log_tail[done])
    return [(done, first), (redo, full)] if len(done) else [(redo, full)]


def sample_rows(scores: torch.Tensor, rows: Sequence[RowSampler]) -> torch.Tensor:
    """Tokens for rows that sample (temperature > 0), from their penalised scores; one uniform number per row."""
    tempered = scores / _settings(rows, "temperature")[:, None]
    u = torch.tensor([r.uniform() for r in rows])
    tokens = torch.empty(len(rows), dtype=torch.long)
    for index, c in truncated(tempered, rows):
        tokens[index] = draw(c, u[index])
    return tokens


class BatchSampler:
    """Samples one step for every row at once; `rows[i]` holds row i's settings, seed and seen ids."""

    def sample(self, logits: torch.Tensor, rows: Sequence[RowSampler]) -> list[Sampled]:
        raw = logits.float()
        log_total = torch.logsumexp(raw, dim=1)
        top = raw.topk(min(TOP_K, raw.shape[1]), dim=1)
        alt_probs = (top.values - log_total[:, None]).exp()
        scores = penalise(raw, rows)
        tokens = torch.empty(len(rows), dtype=torch.long)
        greedy = [i for i, r in enumerate(rows) if r.settings.greedy]
        if greedy:
            tokens[greedy] = scores[greedy].argmax(dim=1)
        sampling = [i for i, r in enumerate(rows) if not r.settings.greedy]
        if sampling:
            tokens[sampling] = sample_rows(scores[sampling], [rows[i] for i in sampling])
        probs = (raw.gather(1, tokens[:, None])[:, 0] - log_total).exp()
        out = []
        for i, row in enumerate(rows):
            token = int(tokens[i])
            row.remember(token)
            out.append(Sampled(token, float(probs[i]), tuple(top.indices[i].tolist()), tuple(alt_probs[i].tolist())))
        return out
