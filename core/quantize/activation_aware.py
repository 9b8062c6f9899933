"""Compression that looks at the activations: Wanda pruning and whitened (SVD-LLM) low-rank factorization.

Both read a calibration text through the model once and keep, per linear layer, what its inputs look like:
- Wanda (Sun et al. 2023) scores each weight by |W_ij| times the norm of input feature j over the calibration
  tokens and prunes the lowest scores of each output row (or 2 of every 4 inputs for the 2:4 pattern): a small
  weight on a large activation matters more than magnitude pruning thinks.
- SVD-LLM (Wang et al. 2024) factors W L instead of W, where L L^T is the Cholesky factor of the inputs' X^T X,
  so truncating the smallest singular values removes the least of the layer's *output* (||(W - W')X||), then
  undoes the whitening: W' = U_r S_r V_r^T L^{-1}.
Low-rank ranks are chosen per layer from one overall budget ("cut 20 % of the linear parameters"): singular
components are dropped cheapest first (least *relative* output error per parameter saved, so layers whose inputs
are small are not emptied first), across all layers together. X^T X is shrunk towards the identity (Ledoit-Wolf):
a calibration text of a few thousand tokens cannot estimate it for 1,536 input features. Both choices were made on
held-out calibration text (uniform ranks, absolute error and the raw X^T X did worse there).
Activations come from the dense model in one pass (Wanda's paper re-runs each pruned block; we measure both
rows against magnitude pruning and plain SVD, which is what the comparison needs).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch
from torch import nn

from core.common.errors import InputError

WINDOW = 256  # calibration tokens per forward pass
DAMPING = 1e-5  # relative to the mean of diag(X^T X): keeps the Cholesky factorization defined


@dataclass
class InputStats:
    """What one linear layer's inputs looked like over the calibration tokens."""

    sumsq: torch.Tensor  # (in,) sum over tokens of x_j^2, for Wanda
    gram: torch.Tensor | None  # (in, in) X^T X, for whitening
    tokens: int = 0
    fourth: float = 0.0  # sum over tokens of ||x||^4, for the Ledoit-Wolf shrinkage of X^T X

    def shrunk_gram(self) -> tuple[torch.Tensor, float]:
        """X^T X shrunk towards a multiple of the identity by the Ledoit-Wolf coefficient (as sklearn's
        ledoit_wolf_shrinkage with assume_centered=True), and the coefficient. With fewer calibration tokens than
        input features X^T X is singular: whitening by it alone fits the calibration text, not the language."""
        n, d = self.tokens, self.gram.shape[0]
        cov = self.gram / n
        mu = cov.trace() / d
        frobenius = (cov * cov).sum()
        delta = (frobenius - 2 * mu * cov.trace() + d * mu * mu) / d
        beta = min(float((self.fourth / n - frobenius) / (d * n)), float(delta))
        shrink = beta / float(delta) if beta > 0 else 0.0
        eye = torch.eye(d, dtype=cov.dtype)
        return n * ((1 - shrink) * cov + shrink * mu * eye), shrink


def collect_stats(model: nn.Module, layers: list[nn.Linear], ids: torch.Tensor, gram: bool) -> dict[nn.Linear, InputStats]:
    """Run the calibration ids through the model once, recording each layer's input statistics (float64)."""
    if ids.numel() < 2:
        raise InputError("The calibration text needs at least a few words.")
    stats = {layer: InputStats(torch.zeros(layer.in_features, dtype=torch.float64),
                               torch.zeros(layer.in_features, layer.in_features, dtype=torch.float64) if gram else None)
             for layer in layers}

    def hook(layer, inputs):
        x = inputs[0].detach().reshape(-1, layer.in_features).double()
        entry = stats[layer]
        squares = x * x
        entry.sumsq += squares.sum(0)
        if entry.gram is not None:
            entry.gram += x.T @ x
            entry.fourth += float((squares.sum(1) ** 2).sum())
        entry.tokens += x.shape[0]

    handles = [layer.register_forward_pre_hook(hook) for layer in layers]
    try:
        with torch.no_grad():
            for start in range(0, ids.shape[1], WINDOW):
                window = ids[:, start:start + WINDOW]
                if window.shape[1] > 1:
                    model(input_ids=window.to(next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    return stats


# ---- Wanda --------------------------------------------------------------------------------------------------------
def wanda_mask(weight: torch.Tensor, sumsq: torch.Tensor, sparsity: float, pattern: str = "unstructured") -> torch.Tensor:
    """True where a weight is kept: per output row, the lowest |W| * ||x_j|| go (or 2 of every 4 for "2:4")."""
    score = weight.detach().abs().double() * sumsq.sqrt()[None, :]
    keep = torch.ones_like(weight, dtype=torch.bool)
    if pattern == "2:4":
        if weight.shape[1] % 4:
            raise InputError(f"2:4 sparsity needs input widths divisible by 4; a layer has {weight.shape[1]}.")
        groups = score.reshape(weight.shape[0], -1, 4)
        drop = groups.argsort(dim=-1)[..., :2]
        return keep.reshape(groups.shape).scatter(-1, drop, False).reshape(weight.shape)
    pruned = int(weight.shape[1] * sparsity)
    if pruned:
        keep.scatter_(1, score.argsort(dim=1)[:, :pruned], False)
    return keep


def wanda_prune(layers: list[nn.Linear], stats: dict[nn.Linear, InputStats], sparsity: float,
                pattern: str = "unstructured") -> int:
    """Zero the pruned weights in place; returns how many were zeroed."""
    zeroed = 0
    with torch.no_grad():
        for layer in layers:
            mask = wanda_mask(layer.weight, stats[layer].sumsq, sparsity, pattern)
            layer.weight.mul_(mask.to(layer.weight.dtype))
            zeroed += int((~mask).sum())
    return zeroed


# ---- low rank under one budget -------------------------------------------------------------------------------------
@dataclass
class Factors:
    """The SVD of one layer's matrix, whitened or plain, ready to truncate."""

    u: torch.Tensor
    s: torch.Tensor
    vh: torch.Tensor  # rows already multiplied by L^{-1} when whitened
    in_features: int
    out_features: int

    @property
    def dense_params(self) -> int:
        return self.in_features * self.out_features

    def params(self, rank: int) -> int:
        """Parameters kept at `rank` (dense when factoring would not save any)."""
        return min(self.dense_params, rank * (self.in_features + self.out_features))


def factorize(weight: torch.Tensor, gram: torch.Tensor | None) -> Factors:
    """SVD of W (plain) or of W L with L L^T = `gram` (whitened); vh comes back un-whitened."""
    w = weight.detach().double()
    if gram is None:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        return Factors(u, s, vh, w.shape[1], w.shape[0])
    damped = gram + torch.eye(gram.shape[0], dtype=gram.dtype) * DAMPING * gram.diagonal().mean().clamp_min(1e-12)
    chol = torch.linalg.cholesky(damped)
    u, s, vh = torch.linalg.svd(w @ chol, full_matrices=False)
    # vh L^{-1}: solve L^T A^T = vh^T for A^T
    unwhitened = torch.linalg.solve_triangular(chol.T, vh.T, upper=True).T
    return Factors(u, s, unwhitened, w.shape[1], w.shape[0])


def allocate_ranks(factors: list[Factors], cut: float) -> list[int | None]:
    """Per layer, the rank to keep (None: stays dense) so that at least `cut` of the layers' parameters go.

    Singular components are dropped from all layers together, cheapest first: the smallest share of its layer's
    energy (s_i^2 / sum s^2) per parameter that dropping it saves (in + out). A layer is factored once its rank is
    low enough to save parameters.
    """
    total = sum(f.dense_params for f in factors)
    target = total * (1 - cut)
    ranks = [len(f.s) for f in factors]
    kept = total
    costs = [(f.s ** 2 / (f.s ** 2).sum().clamp_min(1e-30) / (f.in_features + f.out_features)).tolist()
             for f in factors]
    queue = [(cost[-1], i) for i, cost in enumerate(costs)]
    heapq.heapify(queue)
    while kept > target and queue:
        _, i = heapq.heappop(queue)
        f = factors[i]
        before = f.params(ranks[i])
        ranks[i] -= 1
        kept += f.params(ranks[i]) - before
        if ranks[i] > 0:
            heapq.heappush(queue, (costs[i][ranks[i] - 1], i))
    if kept > target:
        raise InputError(f"A cut of {cut:.0%} would remove every parameter of the linear layers; choose less.")
    return [r if f.params(r) < f.dense_params else None for r, f in zip(ranks, factors)]


class FactoredLinear(nn.Sequential):
    """W' = up @ down as two linear layers: in -> rank (no bias) -> out."""

    def __init__(self, layer: nn.Linear, factors: Factors, rank: int):
        root = factors.s[:rank].sqrt()
        down = nn.Linear(layer.in_features, rank, bias=False, dtype=layer.weight.dtype)
        up = nn.Linear(rank, layer.out_features, bias=layer.bias is not None, dtype=layer.weight.dtype)
        down.weight.data = (root[:, None] * factors.vh[:rank]).to(layer.weight.dtype)
        up.weight.data = (factors.u[:, :rank] * root[None, :]).to(layer.weight.dtype)
        if layer.bias is not None:
            up.bias.data = layer.bias.data.clone()
        super().__init__(down, up)


def low_rank(model_layers: list[tuple[nn.Module, str, nn.Linear]], cut: float,
             stats: dict[nn.Linear, InputStats] | None) -> tuple[int, int]:
    """Factor the layers in place under the budget (whitened when `stats` are given); (params before, after)."""
    factors = [factorize(layer.weight, stats[layer].shrunk_gram()[0] if stats else None) for _, _, layer in model_layers]
    ranks = allocate_ranks(factors, cut)
    before = sum(f.dense_params for f in factors)
    after = 0
    for (parent, name, layer), f, rank in zip(model_layers, factors, ranks):
        if rank is None:
            after += f.dense_params
            continue
        setattr(parent, name, FactoredLinear(layer, f, rank))
        after += f.params(rank)
    return before, after
