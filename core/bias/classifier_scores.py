"""A classifier's score for one chosen label (e.g. 'positive'), shared by the probes that use a classifier."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.classify.classifier import predict_proba
from core.common.errors import InputError

AUTO = "auto"


def resolve_label(labels: list[str], wanted: str = AUTO) -> int:
    """Column of `wanted` in the classifier's labels; 'auto' picks a 'pos…' label, else the last one."""
    wanted = (wanted or AUTO).strip()
    lowered = [label.lower() for label in labels]
    if wanted.lower() != AUTO:
        if wanted.lower() in lowered:
            return lowered.index(wanted.lower())
        raise InputError(f"the classifier has no label '{wanted}'; its labels are {', '.join(labels)}")
    return next((i for i, label in enumerate(lowered) if label.startswith("pos")), len(labels) - 1)


@dataclass(frozen=True)
class LabelScores:
    label: str  # the label whose probability is the score
    scores: np.ndarray  # probability of `label` per text
    predicted: list[str]  # arg-max label per text


def label_scores(model, tokenizer, texts: list[str], wanted: str = AUTO, batch_size: int = 32) -> LabelScores:
    probs = predict_proba(model, tokenizer, texts, batch_size=batch_size)
    column = resolve_label(probs.labels, wanted)
    predicted = [probs.labels[i] for i in probs.probs.argmax(axis=1)] if len(texts) else []
    return LabelScores(probs.labels[column], probs.probs[:, column], predicted)
