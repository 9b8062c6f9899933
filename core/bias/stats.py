"""Bootstrap confidence intervals: percentile intervals from seeded resamples."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

DEFAULT_RESAMPLES = 1000


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}

    def describe(self, scale: float = 1.0, unit: str = "", digits: int = 1) -> str:
        f = f"{{:.{digits}f}}"
        return f"{f.format(self.estimate * scale)}{unit} [{f.format(self.low * scale)}, {f.format(self.high * scale)}]"


def percentile_interval(samples: np.ndarray, estimate: float, level: float = 0.95) -> Interval:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return Interval(estimate, float("nan"), float("nan"))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return Interval(float(estimate), float(low), float(high))


def bootstrap_mean(values: np.ndarray, resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = 0.95) -> Interval:
    """Mean of `values` (e.g. 0/1 outcomes, giving a share) with a percentile bootstrap interval."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, values.size, size=(resamples, values.size))
    return percentile_interval(values[draws].mean(axis=1), float(values.mean()), level)


def bootstrap_statistic(statistic: Callable[[np.ndarray], float], n: int, strata: np.ndarray | None = None,
                        resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = 0.95) -> Interval:
    """Interval for `statistic(row_indices)` over resampled rows.

    With `strata`, rows are resampled within each stratum (e.g. each demographic group), so every
    resample keeps every group at its original size and group metrics stay defined.
    """
    samples = np.array([statistic(rows) for rows in resampled_rows(n, strata, resamples, seed)])
    return percentile_interval(samples, statistic(np.arange(n)), level)


def resampled_rows(n: int, strata: np.ndarray | None = None, resamples: int = DEFAULT_RESAMPLES, seed: int = 0):
    """Row indices of each bootstrap resample (within strata when given), from a seeded generator."""
    rng = np.random.default_rng(seed)
    strata = np.zeros(n, dtype=int) if strata is None else np.asarray(strata)
    members = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    for _ in range(resamples):
        yield np.concatenate([m[rng.integers(0, m.size, m.size)] for m in members])
