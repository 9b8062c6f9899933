"""The vectorised sampler against transformers' own logits processors, row by row and batched (no model needed)."""
from __future__ import annotations

import pytest
import torch
from transformers import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from core.chat.sampler import CANDIDATES, BatchSampler, Knobs, RowSampler, penalise, truncated
from core.chat.sampling import SamplingSettings

VOCAB = 5000
SETTINGS = [
    SamplingSettings(),  # the Chat tab's defaults: T 0.7, top-k 50, top-p 0.95, repetition penalty 1.1
    SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0),  # plain sampling
    SamplingSettings(temperature=1.0, top_k=0, top_p=0.9, repetition_penalty=1.0),  # top-p alone
    SamplingSettings(temperature=1.5, top_k=0, top_p=0.999, repetition_penalty=1.3),  # too flat for the candidates
    SamplingSettings(temperature=0.8, top_k=0, top_p=1.0, min_p=0.05, repetition_penalty=1.0),  # min-p alone
    SamplingSettings(temperature=0.5, top_k=7, top_p=0.8, min_p=0.1, repetition_penalty=0.8),  # everything at once
    SamplingSettings(temperature=0, repetition_penalty=1.2),  # greedy
]


def hf_processors(settings: SamplingSettings) -> LogitsProcessorList:
    """What `generate` applies for these settings, in its order (the reference)."""
    processors = LogitsProcessorList()
    if settings.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
    if settings.greedy:
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


def logits_and_history(seed: int, rows: int, scale: float = 4.0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, VOCAB, generator=generator) * scale
    history = [torch.randint(0, VOCAB, (30,), generator=generator).tolist() for _ in range(rows)]
    return logits, history


def our_distribution(logits: torch.Tensor, rows: list[RowSampler]) -> torch.Tensor:
    out = torch.zeros_like(logits)
    for index, c in truncated(penalise(logits, rows), Knobs.of(rows)):
        out[index] = torch.zeros(len(index), VOCAB).scatter(
            1, c.ids, torch.softmax(c.scores, dim=1))
    return out


@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_each_rows_distribution_equals_transformers_processors_batched(scale):
    sampling = [s for s in SETTINGS if not s.greedy]
    logits, history = logits_and_history(1, len(sampling), scale)
    rows = [RowSampler(s, h) for s, h in zip(sampling, history)]
    ours = our_distribution(logits, rows)
    for i, settings in enumerate(sampling):
        scores = hf_processors(settings)(torch.tensor([history[i]]), logits[i:i + 1].clone())
        theirs = torch.softmax(scores, dim=-1)[0]
        assert torch.equal(ours[i] > 0, theirs > 0), settings  # the same tokens kept
        assert torch.allclose(ours[i], theirs, atol=1e-6), settings


def test_top_p_without_top_k_falls_back_to_a_full_sort_only_when_the_candidates_hold_too_little():
    flat = torch.zeros(1, VOCAB)  # every token equally likely: CANDIDATES tokens hold a fifth of the mass
    row = RowSampler(SamplingSettings(temperature=1.0, top_k=0, top_p=0.9, repetition_penalty=1.0), [])
    [(_, c)] = truncated(flat, Knobs.of([row]))
    assert c.scores.shape[1] == VOCAB and int(c.scores.isfinite().sum()) == pytest.approx(0.9 * VOCAB, abs=2)
    peaked = torch.zeros(1, VOCAB)
    peaked[0, :10] = 20.0
    [(_, c)] = truncated(peaked, Knobs.of([row]))
    assert c.scores.shape[1] == CANDIDATES and int(c.scores.isfinite().sum()) == 10


def test_batched_sampling_equals_per_row_sampling_for_the_same_seeds():
    logits, history = logits_and_history(2, len(SETTINGS))
    seeded = [SamplingSettings(**{**s.__dict__, "seed": 100 + i}) for i, s in enumerate(SETTINGS)]
    together_rows = [RowSampler(s, h) for s, h in zip(seeded, history)]
    alone_rows = [RowSampler(s, h) for s, h in zip(seeded, history)]
    sampler = BatchSampler()
    for step in range(20):
        together = sampler.sample(logits + step, together_rows)
        alone = [sampler.sample(logits[i:i + 1] + step, [row])[0] for i, row in enumerate(alone_rows)]
        assert [s.token for s in together] == [s.token for s in alone]
        for a, b in zip(together, alone):
            assert a.alt_ids == b.alt_ids and a.prob == pytest.approx(b.prob, rel=1e-6)


def test_greedy_takes_the_penalised_argmax_and_the_token_view_reads_the_raw_logits():
    logits, history = logits_and_history(3, 1)
    row = RowSampler(SamplingSettings(temperature=0, repetition_penalty=1.2), history[0])
    [chosen] = BatchSampler().sample(logits, [row])
    expected = hf_processors(row.settings)(torch.tensor(history), logits.clone()).argmax()
    assert chosen.token == int(expected)
    raw = torch.softmax(logits[0], dim=-1)
    assert chosen.prob == pytest.approx(float(raw[chosen.token]))
    assert list(chosen.alt_ids) == raw.topk(5).indices.tolist()
    assert chosen.token in row.seen.tolist()  # remembered for the next step's penalty


def test_draws_follow_the_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -9.0]])
    settings = SamplingSettings(temperature=1.0, top_k=4, top_p=1.0, repetition_penalty=1.0, seed=7)
    row = RowSampler(settings, [])
    sampler = BatchSampler()
    counts = torch.bincount(torch.tensor([sampler.sample(logits, [row])[0].token for _ in range(1000)]),
                            minlength=6).float() / 1000
    expected = torch.softmax(logits[0, :4], dim=0)
    assert counts[4:].sum() == 0 and torch.allclose(counts[:4], expected, atol=0.05)
