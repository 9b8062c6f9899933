"""Evaluation metrics for fine-tuned models, computed locally (scikit-learn, no hub downloads)."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class ClassificationMetrics:
    accuracy: float
    precision: float  # macro averages: every class counts the same
    recall: float
    f1: float
    labels: list[str]
    report: pd.DataFrame  # per class: precision, recall, f1, support
    confusion: list[list[int]]  # rows: true label, columns: predicted label, in `labels` order

    def summary(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "macro_precision": self.precision, "macro_recall": self.recall,
                "macro_f1": self.f1}


@dataclass(frozen=True)
class EntityMetrics:
    precision: float  # entity level, micro-averaged over entity types: a span counts only if type and bounds match
    recall: float
    f1: float
    report: pd.DataFrame  # per entity type: precision, recall, f1, support
    token_accuracy: float

    def summary(self) -> dict[str, float]:
        return {"entity_precision": self.precision, "entity_recall": self.recall, "entity_f1": self.f1,
                "token_accuracy": self.token_accuracy}


@dataclass(frozen=True)
class PerplexityMetrics:
    before: float
    after: float
    tokens: int  # tokens scored

    def summary(self) -> dict[str, float]:
        return {"perplexity_before": self.before, "perplexity_after": self.after}


Metrics = ClassificationMetrics | EntityMetrics | PerplexityMetrics


def classification_metrics(y_true: list[str], y_pred: list[str], labels: list[str]) -> ClassificationMetrics:
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    report = pd.DataFrame({"label": labels, "precision": p, "recall": r, "f1": f, "support": s})
    mp, mr, mf, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    return ClassificationMetrics(float(accuracy_score(y_true, y_pred)), float(mp), float(mr), float(mf), list(labels),
                                 report, confusion_matrix(y_true, y_pred, labels=labels).tolist())


def entity_spans(tags: list[str]) -> set[tuple[str, int, int]]:
    """(type, start, end) spans from IOB/IOB2 tags; an I- that does not continue its type opens a new span."""
    spans, kind, start = set(), None, 0
    for i, tag in enumerate(list(tags) + ["O"]):
        continues = tag.startswith("I-") and tag[2:] == kind
        if kind is not None and not continues:
            spans.add((kind, start, i))
            kind = None
        if tag != "O" and not continues:
            kind, start = tag[2:], i
    return spans


def entity_metrics(true_tags: list[list[str]], pred_tags: list[list[str]]) -> EntityMetrics:
    rows: dict[str, list[int]] = {}  # type -> [true positives, predicted, gold]
    right = total = 0
    for gold, pred in zip(true_tags, pred_tags):
        gold_spans, pred_spans = entity_spans(gold), entity_spans(pred)
        for kind in {s[0] for s in gold_spans | pred_spans}:
            counts = rows.setdefault(kind, [0, 0, 0])
            counts[0] += len({s for s in gold_spans & pred_spans if s[0] == kind})
            counts[1] += sum(s[0] == kind for s in pred_spans)
            counts[2] += sum(s[0] == kind for s in gold_spans)
        right += sum(g == p for g, p in zip(gold, pred))
        total += len(gold)

    def prf(tp: int, predicted: int, gold: int) -> tuple[float, float, float]:
        p = tp / predicted if predicted else 0.0
        r = tp / gold if gold else 0.0
        return p, r, 2 * p * r / (p + r) if p + r else 0.0

    report = pd.DataFrame([(k, *prf(*c), c[2]) for k, c in sorted(rows.items())],
                          columns=["entity", "precision", "recall", "f1", "support"])
    p, r, f = prf(*(sum(c[i] for c in rows.values()) for i in range(3)))
    return EntityMetrics(p, r, f, report, right / total if total else 0.0)
