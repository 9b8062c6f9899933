"""Fairness of a classifier on labelled data: per-group rates and disparity metrics via fairlearn.

Point estimates come from fairlearn's MetricFrame and its disparity functions; bootstrap
intervals resample rows within each group and recompute the same quantities with numpy
(the test suite checks that the numpy versions equal fairlearn's).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from fairlearn.metrics import (
    MetricFrame,
    count,
    demographic_parity_difference,
    demographic_parity_ratio,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score

from core.bias import charts
from core.bias.classifier_scores import AUTO
from core.bias.report import MetricNote, ReportSection, data_hash
from core.bias.stats import Interval, bootstrap_mean, percentile_interval, resampled_rows
from core.classify.classifier import predict_proba
from core.common.errors import InputError
from core.common.uploads import UploadError, read_table, require_columns
from core.models.paths import assets_dir

COLUMNS = ["text", "label", "group"]
POSITIVE_NAMES = ("1", "pos", "positive", "true", "yes")

NOTES = [
    MetricNote("Accuracy per group", "the share of each group's texts the classifier labels correctly.",
               "equal accuracy can hide opposite error types (missed positives in one group, false alarms in another)."),
    MetricNote("Selection rate", "the share of each group's texts predicted as the positive label.",
               "different true base rates between groups make equal selection rates neither expected nor always fair."),
    MetricNote("True / false positive rate", "TPR: the share of truly positive texts predicted positive; FPR: the share "
               "of truly negative texts predicted positive, per group.",
               "a group with few positives or negatives gets an unstable rate (0 when it has none, as in fairlearn)."),
    MetricNote("Demographic parity difference / ratio", "the largest gap (difference, 0 is parity) and the smallest "
               "quotient (ratio, 1 is parity) between groups' selection rates; the 80% rule flags ratios below 0.8.",
               "it ignores the true labels, so a perfect classifier can fail it when groups' base rates differ."),
    MetricNote("Equalized odds difference", "the larger of the between-group gaps in TPR and in FPR; 0 means every group "
               "gets the same error rates.", "with small groups, most of this gap can be sampling noise; read the interval."),
]


def load_fairness_data(path: str | Path | None = None, max_rows: int = 20_000) -> pd.DataFrame:
    """text, label, group rows (the built-in example when no path), with messages for missing columns, a single
    group or non-binary labels."""
    path = Path(path) if path else assets_dir() / "fairness_example.csv"
    frame = read_table(path, max_rows=max_rows)
    require_columns(frame, COLUMNS, path.name)
    frame = frame[COLUMNS].astype(str).apply(lambda col: col.str.strip())
    frame = frame[(frame != "").all(axis=1)].reset_index(drop=True)
    if frame.empty:
        raise UploadError(f"{path.name} has no rows with text, label and group all filled in.")
    groups = frame["group"].unique()
    if len(groups) < 2:
        raise UploadError(f"{path.name} has only one group ('{groups[0]}'); fairness compares groups, so the 'group' "
                          "column needs at least two different values.")
    labels = sorted(frame["label"].unique())
    if len(labels) != 2:
        raise UploadError(f"{path.name} has {len(labels)} label value(s) ({', '.join(labels[:6])}); these metrics need "
                          "binary labels: exactly two values, e.g. 0/1 or negative/positive.")
    return frame


def positive_label(data_labels: list[str], wanted: str = AUTO) -> str:
    """The data label treated as 'positive' (selected); 'auto' prefers 1 / pos / true / yes."""
    if wanted and wanted.strip().lower() != AUTO:
        match = [l for l in data_labels if l.lower() == wanted.strip().lower()]
        if not match:
            raise InputError(f"positive label '{wanted}' is not in the data; its labels are {', '.join(data_labels)}")
        return match[0]
    return next((l for l in data_labels if l.lower() in POSITIVE_NAMES), sorted(data_labels)[-1])


def map_predictions(class_labels: list[str], predicted_columns: np.ndarray, data_labels: list[str]) -> list[str]:
    """Classifier outputs in the data's label vocabulary: by name, or by class index when the data uses 0, 1, ..."""
    by_name = {c.lower(): c for c in class_labels}
    if all(l.lower() in by_name for l in data_labels):
        to_data = {by_name[l.lower()]: l for l in data_labels}
        return [to_data.get(class_labels[i], f"<{class_labels[i]}>") for i in predicted_columns]
    if all(l.isdigit() and int(l) < len(class_labels) for l in data_labels):
        return [str(i) for i in predicted_columns]
    raise UploadError(f"the data's labels ({', '.join(data_labels)}) match neither the classifier's label names "
                      f"({', '.join(class_labels)}) nor its class numbers 0..{len(class_labels) - 1}.")


def _rates(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, names: np.ndarray) -> tuple[np.ndarray, ...]:
    """Selection rate, TPR and FPR per group with numpy; an empty denominator gives 0, as fairlearn does."""
    select, tpr, fpr = (np.zeros(len(names)) for _ in range(3))
    for k, name in enumerate(names):
        t, p = y_true[groups == name], y_pred[groups == name]
        select[k] = p.mean()
        tpr[k] = p[t == 1].mean() if (t == 1).any() else 0.0
        fpr[k] = p[t == 0].mean() if (t == 0).any() else 0.0
    return select, tpr, fpr


def disparities(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """Demographic parity difference and ratio and equalized odds difference, hand-computed."""
    select, tpr, fpr = _rates(y_true, y_pred, groups, np.unique(groups))
    return {"demographic_parity_difference": float(np.ptp(select)),
            "demographic_parity_ratio": float(select.min() / select.max()) if select.max() > 0 else float("nan"),
            "equalized_odds_difference": float(max(np.ptp(tpr), np.ptp(fpr)))}


@dataclass
class FairnessResult:
    by_group: pd.DataFrame  # group, count, accuracy, selection_rate, tpr, fpr (+ intervals)
    overall: dict[str, float]
    disparities: dict[str, Interval]
    positive: str
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> pd.DataFrame:
        return pd.DataFrame([{"metric": name, **interval.as_dict()} for name, interval in self.disparities.items()])


def fairness_metrics(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, positive: str = "1",
                     resamples: int = 1000, seed: int = 0) -> FairnessResult:
    """Per-group metrics and disparities for 0/1 arrays, with bootstrap intervals resampled within groups."""
    y_true, y_pred, groups = np.asarray(y_true, int), np.asarray(y_pred, int), np.asarray(groups).astype(str)
    frame = MetricFrame(metrics={"count": count, "accuracy": accuracy_score, "selection_rate": selection_rate,
                                 "tpr": true_positive_rate, "fpr": false_positive_rate},
                        y_true=y_true, y_pred=y_pred, sensitive_features=pd.Series(groups, name="group"))
    by_group = frame.by_group.reset_index()
    by_group["count"] = by_group["count"].astype(int)
    point = {"demographic_parity_difference": demographic_parity_difference(y_true, y_pred, sensitive_features=groups),
             "demographic_parity_ratio": demographic_parity_ratio(y_true, y_pred, sensitive_features=groups),
             "equalized_odds_difference": equalized_odds_difference(y_true, y_pred, sensitive_features=groups)}
    boot = pd.DataFrame([disparities(y_true[rows], y_pred[rows], groups[rows])
                         for rows in resampled_rows(len(y_true), groups, resamples, seed)])
    intervals = {name: percentile_interval(boot[name].to_numpy(), float(estimate)) for name, estimate in point.items()}
    for metric in ("accuracy", "selection_rate"):
        lows, highs = [], []
        for group in by_group["group"]:
            member = groups == group
            values = (y_true[member] == y_pred[member]) if metric == "accuracy" else y_pred[member]
            interval = bootstrap_mean(values.astype(float), resamples, seed)
            lows.append(interval.low)
            highs.append(interval.high)
        by_group[f"{metric}_low"], by_group[f"{metric}_high"] = lows, highs
    warnings = [f"group '{g}' has no {kind} examples, so its {rate} is 0 by convention"
                for g in by_group["group"] for kind, rate, value in (("positive", "TPR", 1), ("negative", "FPR", 0))
                if not (y_true[groups == g] == value).any()]
    overall = {k: float(v) for k, v in frame.overall.items()}
    return FairnessResult(by_group, overall, intervals, positive, warnings)


def run_fairness(data: pd.DataFrame, classifier, wanted_positive: str = AUTO, resamples: int = 1000,
                 seed: int = 0) -> tuple[FairnessResult, pd.DataFrame]:
    """Predict every text with `classifier` (model, tokenizer) and measure; returns the result and the predictions."""
    data_labels = sorted(data["label"].unique())
    positive = positive_label(data_labels, wanted_positive)
    probs = predict_proba(*classifier, data["text"].tolist())
    predicted = map_predictions(probs.labels, probs.probs.argmax(axis=1), data_labels)
    scored = data.assign(prediction=predicted)
    result = fairness_metrics((scored["label"] == positive).to_numpy(), (scored["prediction"] == positive).to_numpy(),
                              scored["group"].to_numpy(), positive, resamples, seed)
    return result, scored


def to_section(result: FairnessResult, scored: pd.DataFrame, models: dict[str, str], settings: dict,
               seed: int) -> ReportSection:
    long = result.by_group.melt(id_vars="group", value_vars=["accuracy", "selection_rate", "tpr", "fpr"],
                                var_name="metric", value_name="value")
    figures = [charts.grouped_bars(long, "metric", "value", "group", "Per-group metrics", "rate"),
               charts.interval_bars(result.summary(), "metric", "estimate", "low", "high",
                                    "Disparities with bootstrap 95% intervals", "value")]
    results = {"positive_label": result.positive, "by_group": result.by_group, "overall": result.overall,
               "disparities": {k: v.as_dict() for k, v in result.disparities.items()}, "warnings": result.warnings}
    return ReportSection("fairness", "Fairness on labelled data", models, settings, data_hash(scored[COLUMNS]),
                         result.summary(), NOTES, results, figures, seed)
