"""A confidence flag for one prediction: is the model unsure, or is the text unlike what it was trained on?

Maximum softmax probability (Hendrycks & Gimpel, 2017) is the simplest out-of-distribution baseline:
in-distribution inputs tend to get a peaked distribution, odd inputs a flatter one. Entropy, scaled
to [0, 1] by log(n_classes), says the same thing over all classes and is shown next to it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.common.errors import InputError

DEFAULT_THRESHOLD = 0.70

EXPLANATION = ("A prediction is flagged as low confidence (possibly out of distribution) when its top class "
               "probability is below the threshold: the model spreads its belief over several labels, "
               "which often happens on text unlike its training data.")


@dataclass(frozen=True)
class Confidence:
    max_prob: float
    entropy: float  # normalised: 0 = all mass on one class, 1 = uniform
    threshold: float

    @property
    def low(self) -> bool:
        return self.max_prob < self.threshold

    def describe(self) -> str:
        verdict = "⚠️ low confidence: possibly out of distribution" if self.low else "✅ confident"
        return (f"{verdict} (top probability {self.max_prob:.2f} vs threshold {self.threshold:.2f}; "
                f"normalised entropy {self.entropy:.2f})")


def normalised_entropy(probs: np.ndarray) -> float:
    probs = np.asarray(probs, dtype=float)
    if probs.size < 2:
        return 0.0
    p = probs[probs > 0]
    return float(-(p * np.log(p)).sum() / np.log(probs.size))


def confidence(probs: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> Confidence:
    """Flag for one row of class probabilities."""
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold must be between 0 and 1, got {threshold}")
    probs = np.asarray(probs, dtype=float)
    return Confidence(float(probs.max()), normalised_entropy(probs), float(threshold))
