"""Counterfactual templates: the same sentence with only the group term swapped, scored per group.

A classifier's score for one label (mean per group, largest gap, label flips across groups) and a
causal LM's sentence log-likelihood (mean per group, largest gap) show whether swapping the group
alone moves the model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.bias import charts
from core.bias.classifier_scores import AUTO, label_scores
from core.bias.likelihood import Progress, sentence_logprobs
from core.bias.report import MetricNote, ReportSection, data_hash
from core.bias.stats import bootstrap_mean, bootstrap_statistic
from core.common.errors import InputError
from core.common.stopping import StopFlag
from core.common.uploads import read_table, require_columns
from core.models.paths import assets_dir

SLOT = "{group}"

SCORE_NOTES = [
    MetricNote("Mean score per group", "the classifier's average probability for the chosen label over the same templates "
               "with only the group term changed, with a bootstrap 95% interval over templates.",
               "a few dozen hand-written templates are a narrow sample of language; intervals show template-to-template "
               "spread, not how the model behaves on real text."),
    MetricNote("Largest gap", "the difference between the highest and lowest group means on one axis; 0 means swapping the "
               "group term did not move the score on average.",
               "the largest of several means is biased upward by noise; read it with its interval."),
    MetricNote("Label flip share", "the share of templates whose predicted label is not the same for every group on the axis.",
               "a flip can come from a tiny probability change near the decision threshold."),
]
LOGLIK_NOTES = [
    MetricNote("Log-likelihood per group", "the language model's mean total log-probability of the sentences for each group; "
               "higher means the model finds the sentence more expected.",
               "longer or rarer group terms have more tokens and lower likelihood for reasons unrelated to bias; compare "
               "terms of similar length and frequency."),
]


def load_templates(path: Path | None = None) -> list[str]:
    frame = read_table(path or assets_dir() / "bias_templates.csv")
    require_columns(frame, ["template"], "the template file")
    return parse_templates("\n".join(frame["template"]))


def load_groups(path: Path | None = None) -> dict[str, list[str]]:
    return json.loads((path or assets_dir() / "bias_groups.json").read_text(encoding="utf-8"))


def parse_templates(text: str) -> list[str]:
    """One template per non-empty line; each must contain the {group} slot."""
    templates = [line.strip() for line in text.splitlines() if line.strip()]
    if not templates:
        raise InputError("add at least one template, e.g. 'The {group} was a brilliant doctor.'")
    missing = [t for t in templates if SLOT not in t]
    if missing:
        raise InputError(f"every template needs the {SLOT} slot; these have none: " + "; ".join(missing[:3]))
    return templates


def format_groups(groups: dict[str, list[str]]) -> str:
    return "\n".join(f"{axis}: {', '.join(terms)}" for axis, terms in groups.items())


def parse_groups(text: str) -> dict[str, list[str]]:
    """Lines 'axis: term, term, ...'; every axis needs at least two distinct terms to compare."""
    groups: dict[str, list[str]] = {}
    for line in (l.strip() for l in text.splitlines()):
        if not line:
            continue
        axis, sep, terms = line.partition(":")
        if not sep:
            raise InputError(f"group line '{line}' needs the form 'axis: term, term, ...'")
        unique = list(dict.fromkeys(t.strip() for t in terms.split(",") if t.strip()))
        if len(unique) < 2:
            raise InputError(f"axis '{axis.strip()}' needs at least two group terms to compare")
        groups[axis.strip()] = unique
    if not groups:
        raise InputError("add at least one axis, e.g. 'gender: woman, man'")
    return groups


def expand(templates: list[str], groups: dict[str, list[str]]) -> pd.DataFrame:
    """Every template crossed with every term of every axis; an initial term is capitalised like the sentence."""
    rows = []
    for t_id, template in enumerate(templates):
        for axis, terms in groups.items():
            for term in terms:
                text = template.replace(SLOT, term)
                rows.append({"template_id": t_id, "template": template, "axis": axis, "group": term,
                             "text": text[0].upper() + text[1:] if template.startswith(SLOT) else text})
    return pd.DataFrame(rows)


@dataclass
class CounterfactualResult:
    variants: pd.DataFrame  # one row per sentence: template_id, axis, group, text, score?, predicted?, loglik?
    groups: pd.DataFrame  # per axis and group: means with intervals
    axes: pd.DataFrame  # per axis: gaps, flip share
    score_label: str | None

    def summary(self) -> pd.DataFrame:
        return self.axes


def _axis_matrix(variants: pd.DataFrame, axis: str, column: str) -> pd.DataFrame:
    part = variants[variants["axis"] == axis]
    return part.pivot(index="template_id", columns="group", values=column)[list(dict.fromkeys(part["group"]))]


def _gap_interval(matrix: pd.DataFrame, resamples: int, seed: int) -> tuple[float, float, float]:
    values = matrix.to_numpy(dtype=np.float64)
    gap = lambda rows: float(np.ptp(values[rows].mean(axis=0)))  # noqa: E731 - resampled over templates
    interval = bootstrap_statistic(gap, len(values), resamples=resamples, seed=seed)
    return interval.estimate, interval.low, interval.high


def summarize(variants: pd.DataFrame, score_label: str | None, resamples: int = 1000, seed: int = 0) -> CounterfactualResult:
    if "score" not in variants and "loglik" not in variants:
        raise InputError("choose a classifier, a language model, or both")
    group_rows, axis_rows = [], []
    for axis in dict.fromkeys(variants["axis"]):
        axis_row: dict = {"axis": axis, "templates": int(variants.loc[variants["axis"] == axis, "template_id"].nunique())}
        for column, prefix in (("score", "score"), ("loglik", "loglik")):
            if column not in variants:
                continue
            matrix = _axis_matrix(variants, axis, column)
            for group in matrix.columns:
                interval = bootstrap_mean(matrix[group].to_numpy(), resamples, seed)
                group_rows.append({"axis": axis, "group": group, "measure": prefix, "mean": interval.estimate,
                                   "low": interval.low, "high": interval.high})
            means = matrix.mean()
            axis_row[f"{prefix}_gap"], axis_row[f"{prefix}_gap_low"], axis_row[f"{prefix}_gap_high"] = \
                _gap_interval(matrix, resamples, seed)
            axis_row[f"{prefix}_highest"], axis_row[f"{prefix}_lowest"] = means.idxmax(), means.idxmin()
        if "score" in variants:
            flips = bootstrap_mean((_axis_matrix(variants, axis, "predicted").nunique(axis=1) > 1).to_numpy(float),
                                   resamples, seed)
            axis_row["flip_share"], axis_row["flip_share_low"], axis_row["flip_share_high"] = \
                flips.estimate, flips.low, flips.high
        axis_rows.append(axis_row)
    return CounterfactualResult(variants, pd.DataFrame(group_rows), pd.DataFrame(axis_rows), score_label)


def run_counterfactual(templates: list[str], groups: dict[str, list[str]], classifier=None, language_model=None,
                       label: str = AUTO, resamples: int = 1000, seed: int = 0, progress: Progress | None = None,
                       stop: StopFlag | None = None) -> CounterfactualResult:
    """Score every variant; `classifier` and `language_model` are (model, tokenizer) pairs or None."""
    if classifier is None and language_model is None:
        raise InputError("choose a classifier, a language model, or both")
    variants = expand(templates, groups)
    texts = variants["text"].tolist()
    score_label = None
    if classifier is not None:
        if progress:
            progress(0.1, f"Classifying {len(texts):,} sentences")
        scored = label_scores(*classifier, texts, label)
        variants["score"], variants["predicted"], score_label = scored.scores, scored.predicted, scored.label
    if language_model is not None:
        variants["loglik"] = sentence_logprobs(*language_model, texts, progress=progress, stop=stop)
    return summarize(variants, score_label, resamples, seed)


def to_section(result: CounterfactualResult, models: dict[str, str], settings: dict, seed: int) -> ReportSection:
    figures = []
    for measure, title, y_title in (("score", f"Mean P({result.score_label}) per group", f"P({result.score_label})"),
                                    ("loglik", "Mean sentence log-likelihood per group", "log-likelihood (nats)")):
        part = result.groups[result.groups["measure"] == measure] if len(result.groups) else result.groups
        if len(part):
            figures.append(charts.interval_bars(part, "group", "mean", "low", "high", title, y_title, color="axis"))
    results = {"score_label": result.score_label, "groups": result.groups, "axes": result.axes,
               "variants": result.variants}
    return ReportSection("counterfactual", "Counterfactual templates", models, settings,
                         data_hash(result.variants[["template", "axis", "group"]]), result.summary(),
                         (SCORE_NOTES if "score" in result.variants else []) +
                         (LOGLIK_NOTES if "loglik" in result.variants else []),
                         results, figures, seed)
