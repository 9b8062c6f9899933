"""Bias mitigation built into training: counterfactual data augmentation and reweighing by group.

- Counterfactual data augmentation (Lu et al. 2018; Zmigrod et al. 2019): every training text that mentions a
  group word gets a copy with the word swapped (he <-> she, young <-> old, each religion for every other, ...),
  keeping its label, so the classifier cannot learn that the group word itself predicts the label.
- Reweighing (Kamiran & Calders 2012): with a `group` column, each example weighs P(group) P(label) /
  P(group, label), so group and label look independent to the loss.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from core.bias.swaps import AXES, swap_pairs
from core.common.uploads import UploadError
from core.finetune.data import LabeledTexts


@dataclass(frozen=True)
class Augmented:
    data: LabeledTexts
    added: int
    message: str


def augment(data: LabeledTexts, axes: tuple[str, ...] = AXES) -> Augmented:
    """The training texts plus their counterfactual copies (same labels)."""
    origins, copies = swap_pairs(data.texts, axes)
    texts, labels = data.texts + copies, data.labels + [data.labels[i] for i in origins]
    groups = None if data.groups is None else data.groups + [data.groups[i] for i in origins]
    added = len(copies)
    message = (f"Counterfactual augmentation added {added:,} swapped copies ({', '.join(axes)})." if added else
               f"Counterfactual augmentation added nothing: no training text mentions a group word of "
               f"{', '.join(axes)}.")
    return Augmented(LabeledTexts(texts, labels, groups), added, message)


def reweighing(data: LabeledTexts) -> list[float]:
    """Kamiran & Calders weights, one per example: P(group) P(label) / P(group, label)."""
    if data.groups is None:
        raise UploadError("Reweighing needs a 'group' column in the training file (which group each text is about).")
    n = len(data)
    by_group, by_label = Counter(data.groups), Counter(data.labels)
    joint = Counter(zip(data.groups, data.labels))
    return [by_group[g] * by_label[y] / (n * joint[(g, y)]) for g, y in zip(data.groups, data.labels)]
