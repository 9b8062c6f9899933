"""Activation patching, or causal tracing (Meng et al., 2022, "ROME"; TransformerLens's patching module).

The model reads a clean prompt ("The Eiffel Tower is in the city of") and a corrupted one that differs in a few
tokens ("The Colosseum is in the city of"). The logit difference between the clean answer and the corrupted answer
(" Paris" − " Rome") is high after the clean prompt and low after the corrupted one. Then one state of the clean run,
at one layer and position, is copied into the corrupted run, and the share of the difference that comes back is
measured: restored = (patched − corrupted) / (clean − corrupted), 1 = as if clean, 0 = no effect.

The patched runs are batched: each row of a batch is the corrupted prompt with a different (layer, position) patched.
Positions before the first differing token are not run: both prompts are the same up to there, so in a causal model
their states are equal and copying them changes nothing (their share is exactly 0).
"""
from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from core.common.errors import StoppedError
from core.common.stopping import StopFlag
from core.explain.attention import ExplainInputError
from core.explain.residual import (
    RESID,
    SITES,
    Answer,
    LayerCall,
    Prompt,
    calls_recorded,
    encode_prompt,
    hooked,
    model_device,
    one_token_answer,
    require_causal_lm,
)
from core.models.manager import LoadedModel, Progress

PATCH_MAX_TOKENS = 48
BATCH_ROWS = 48  # patched runs per forward pass (measured in bench/explain_lens.py)
_MIN_GAP = 1e-4  # a clean-minus-corrupted logit difference smaller than this leaves nothing to restore


@dataclass(frozen=True)
class PatchingPair:
    """A clean and a corrupted prompt of the same token length, and the answer each should get."""
    clean: Prompt
    corrupted: Prompt
    target: Answer  # the clean answer
    foil: Answer  # the corrupted answer

    @property
    def first_diff(self) -> int:
        return next(i for i, (a, b) in enumerate(zip(self.clean.ids, self.corrupted.ids)) if a != b)


def patching_pair(loaded: LoadedModel, clean: str, corrupted: str, target: str, foil: str) -> PatchingPair:
    """The checked pair, or a message naming what is wrong (tokenization only: no model run)."""
    require_causal_lm(loaded, "Activation patching")
    clean_prompt = encode_prompt(loaded, clean, PATCH_MAX_TOKENS, "clean prompt")
    corrupted_prompt = encode_prompt(loaded, corrupted, PATCH_MAX_TOKENS, "corrupted prompt")
    _check_pair(clean_prompt, corrupted_prompt)
    target_answer = one_token_answer(loaded, clean_prompt.text, target, "clean answer")
    foil_answer = one_token_answer(loaded, corrupted_prompt.text, foil, "corrupted answer")
    if target_answer.token_id == foil_answer.token_id:
        raise ExplainInputError(f"The clean and corrupted answers are the same token ({target_answer.label}): give "
                                "the answer each prompt should get, e.g. Paris and Rome.")
    return PatchingPair(clean_prompt, corrupted_prompt, target_answer, foil_answer)


class Tracer:
    """Both runs of one clean/corrupted pair: every state of the clean run kept for patching, and what each layer of
    the corrupted run was called with, so a patched run can start at the first layer it changes."""

    def __init__(self, loaded: LoadedModel, pair: PatchingPair, sites: Sequence[str] = (RESID,)):
        self.model_id, self.model = loaded.model_id, loaded.model
        self.parts = require_causal_lm(loaded, "Activation patching")
        self.pair = pair
        self.clean, self.corrupted, self.target, self.foil = pair.clean, pair.corrupted, pair.target, pair.foil
        self.first_diff = pair.first_diff
        self.sites = tuple(sites)
        self.modules = {site: self.parts.sites(site) for site in self.sites}
        device = model_device(loaded)
        self.cache: dict[str, torch.Tensor] = {}
        self.clean_logits = self._record_clean(self.clean.tensor(device))
        self.corrupted_ids = self.corrupted.tensor(device)
        self.calls: dict[int, LayerCall] = {}
        with torch.no_grad(), calls_recorded(self.parts.layers, self.calls):
            self.corrupted_logits = self.next_logits(self.corrupted_ids)[0]

    def next_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """The model's own next-token logits after `ids` (a whole forward pass)."""
        return self.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1].float()

    def _record_clean(self, clean_ids: torch.Tensor) -> torch.Tensor:
        """One clean forward pass; keeps each site's output at every layer as (layers, positions, hidden)."""
        kept = {site: [None] * len(modules) for site, modules in self.modules.items()}
        with torch.no_grad(), ExitStack() as hooks:
            for site, modules in self.modules.items():
                hooks.enter_context(hooked(modules, lambda i, h, store=kept[site]: store.__setitem__(i, h[0].clone())))
            logits = self.next_logits(clean_ids)[0]
        self.cache = {site: torch.stack(states) for site, states in kept.items()}
        return logits

    def patched(self, site: str, rows: Sequence[Sequence[tuple[int, int]]]) -> torch.Tensor:
        """Next-token logits of the corrupted prompt, one row per entry of `rows`, row r with each (layer, position)
        state it lists copied from the clean run (an empty list: the corrupted run as it is).

        Up to the first patched layer every row is the corrupted run, so the rows start from the corrupted run's
        input to that layer instead of from the embeddings: about half the work of a whole forward pass."""
        where: dict[int, tuple[list[int], list[int]]] = {}
        for r, cells in enumerate(rows):
            for layer, position in cells:
                where.setdefault(layer, ([], []))[0].append(r)
                where[layer][1].append(position)
        cache = self.cache[site]
        index = {layer: (torch.tensor(rs, device=cache.device), torch.tensor(ps, device=cache.device))
                 for layer, (rs, ps) in where.items()}

        def patch(layer: int, hidden: torch.Tensor) -> None:
            if layer in index:
                batch_rows, positions = index[layer]
                hidden[batch_rows, positions] = cache[layer, positions].to(hidden.dtype)

        start = min(index, default=self.n_layers)
        if start == self.n_layers:
            return self.corrupted_logits.expand(len(rows), -1).clone()
        hidden = self.calls[start].hidden.expand(len(rows), -1, -1).contiguous()
        with torch.no_grad(), hooked(self.modules[site], patch):
            for layer in range(start, self.n_layers):
                hidden = self.calls[layer].run(self.parts.layers[layer], hidden)
            return self.parts.logits(hidden[:, -1])

    def logit_diff(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[..., self.target.token_id] - logits[..., self.foil.token_id]

    @property
    def n_layers(self) -> int:
        return len(self.parts.layers)

    @property
    def n_positions(self) -> int:
        return len(self.clean.ids)


def _check_pair(clean: Prompt, corrupted: Prompt) -> None:
    if len(clean.ids) != len(corrupted.ids):
        raise ExplainInputError(
            f"The clean prompt is {len(clean.ids)} tokens and the corrupted prompt {len(corrupted.ids)} "
            f"(clean: {' | '.join(clean.labels)}; corrupted: {' | '.join(corrupted.labels)}). Patching copies each "
            "position's state across, so both need the same number of tokens: swap a word for one that splits into as "
            "many tokens.")
    if clean.ids == corrupted.ids:
        raise ExplainInputError("The clean and corrupted prompts are the same: change a few words of the corrupted one.")


@dataclass(frozen=True)
class PatchingResult:
    model_id: str
    clean: Prompt
    corrupted: Prompt
    target: Answer
    foil: Answer
    restored: dict[str, np.ndarray]  # site -> (layers, positions): share of the clean logit difference restored
    patched_diff: dict[str, np.ndarray]  # site -> (layers, positions): the logit difference of each patched run
    clean_diff: float
    corrupted_diff: float
    clean_probs: tuple[float, float]  # P(target), P(foil) after the clean prompt
    corrupted_probs: tuple[float, float]
    first_diff: int  # first position where the prompts differ; earlier ones are equal in both runs and not run
    runs: int  # patched forward rows
    batches: int
    seconds: float
    notices: tuple[str, ...]

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(self.restored)

    def best(self, site: str) -> tuple[int, int, float]:
        """(layer, position, share) of the cell that restores the most before the last position (patching the last
        position late restores everything trivially: it is where the answer is read out)."""
        share = self.restored[site][:, :-1] if self.restored[site].shape[1] > 1 else self.restored[site]
        layer, position = np.unravel_index(int(np.argmax(share)), share.shape)
        return int(layer), int(position), float(share[layer, position])


def _restored(tracer: Tracer, diffs: np.ndarray) -> np.ndarray:
    clean, corrupted = (float(tracer.logit_diff(x)) for x in (tracer.clean_logits, tracer.corrupted_logits))
    return (diffs - corrupted) / (clean - corrupted)


def _notices(tracer: Tracer, clean: float, corrupted: float) -> tuple[str, ...]:
    if abs(clean - corrupted) < _MIN_GAP:
        raise ExplainInputError(f"Both prompts give {tracer.target.label} − {tracer.foil.label} the same logit difference "
                                f"({clean:+.3f}): there is nothing for patching to restore. Pick a corrupted prompt that "
                                "changes the model's answer.")
    notices = []
    if clean <= 0:
        notices.append(f"After the clean prompt the model already prefers {tracer.foil.label} to {tracer.target.label} "
                       f"(difference {clean:+.2f}): the map is still exact, but the pair is not a clear contrast.")
    if corrupted >= clean:
        notices.append("The corrupted prompt favours the clean answer more than the clean prompt does: shares are "
                       "measured against a difference that goes the other way.")
    return tuple(notices)


def patching_sweep(tracer: Tracer, stop: StopFlag | None = None, progress: Progress | None = None,
                   batch_rows: int = BATCH_ROWS) -> PatchingResult:
    """Patch every (layer, position) of every site the tracer recorded, `batch_rows` patched runs per forward pass."""
    start = time.perf_counter()
    clean, corrupted = (float(tracer.logit_diff(x)) for x in (tracer.clean_logits, tracer.corrupted_logits))
    notices = _notices(tracer, clean, corrupted)
    # Last layers first: a batch then spans a few neighbouring layers and starts at the lowest of them.
    cells = [(layer, position) for layer in reversed(range(tracer.n_layers))
             for position in range(tracer.first_diff, tracer.n_positions)]
    total, done, batches = len(cells) * len(tracer.sites), 0, 0
    diffs = {}
    for site in tracer.sites:
        grid = np.full((tracer.n_layers, tracer.n_positions), corrupted)  # equal states: the corrupted run itself
        for begin in range(0, len(cells), batch_rows):
            if stop is not None and stop.stopped:
                raise StoppedError(f"Stopped after {done} of {total} patched runs ({stop.reason}).")
            chunk = cells[begin:begin + batch_rows]
            values = tracer.logit_diff(tracer.patched(site, [[cell] for cell in chunk])).cpu().numpy()
            for (layer, position), value in zip(chunk, values):
                grid[layer, position] = value
            done, batches = done + len(chunk), batches + 1
            if progress:
                progress(done / total, f"Patching {SITES[site]}: {done} of {total} runs")
        diffs[site] = grid
    probs = [tuple(float(p) for p in torch.softmax(x, -1)[[tracer.target.token_id, tracer.foil.token_id]])
             for x in (tracer.clean_logits, tracer.corrupted_logits)]
    return PatchingResult(tracer.model_id, tracer.clean, tracer.corrupted, tracer.target, tracer.foil,
                          {site: _restored(tracer, grid) for site, grid in diffs.items()}, diffs, clean, corrupted,
                          probs[0], probs[1], tracer.first_diff, done, batches, time.perf_counter() - start, notices)


def naive_patched_logits(tracer: Tracer, site: str, layer: int, position: int) -> torch.Tensor:
    """One whole forward pass of the corrupted prompt with one clean state copied in."""
    state = tracer.cache[site][layer, position]

    def patch(i: int, hidden: torch.Tensor) -> None:
        if i == layer:
            hidden[0, position] = state.to(hidden.dtype)

    with torch.no_grad(), hooked(tracer.modules[site], patch):
        return tracer.next_logits(tracer.corrupted_ids)[0]


def naive_sweep(tracer: Tracer, site: str = RESID) -> np.ndarray:
    """The textbook loop: one whole forward pass per (layer, position), every position included. The reference the
    batched sweep is checked against (tests) and timed against (bench/explain_lens.py); returns the restored shares."""
    grid = np.array([[float(tracer.logit_diff(naive_patched_logits(tracer, site, layer, position)))
                      for position in range(tracer.n_positions)] for layer in range(tracer.n_layers)])
    return _restored(tracer, grid)
