"""Before / after: a bias-mitigated classifier beside its unmitigated twin, on the same probes.

Three probes, each with bootstrap intervals, for both models:
- the counterfactual templates (largest gap in P(label) between groups, share of templates whose label flips);
- swapped real texts: every text of the labelled data that mentions a group word, against its copies with the
  word swapped (core.bias.swaps): mean |P(label | text) - P(label | swapped)| and the share of label flips;
- fairness on the labelled data (demographic parity and equalized odds differences) and accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.bias import charts, counterfactual, fairness
from core.bias.classifier_scores import AUTO, label_scores
from core.bias.report import MetricNote, ReportSection, data_hash
from core.bias.stats import Interval, bootstrap_mean
from core.bias.swaps import AXES, swap_pairs
from core.common.errors import InputError
from core.models.store import ModelStore

NOTES = [
    MetricNote("Template gap / flips", "as in the Counterfactual templates probe: the largest between-group gap in "
               "the mean P(label) on one axis, and the share of templates whose label changes with the group term.",
               "hand-written templates are a narrow sample of language."),
    MetricNote("Swap gap", "over the labelled texts that mention a group word: the mean |P(label | text) - "
               "P(label | the same text with the word swapped)|; 0 means the group words do not move the model.",
               "a swap can make a sentence odd ('her' is him or his); rare texts can dominate a small sample."),
    MetricNote("Swap flips", "the share of (text, swapped copy) pairs whose predicted label differs.",
               "a flip can come from a tiny probability change near the decision threshold."),
    MetricNote("Change", "after minus before; for gaps, flips and disparities lower is better, for accuracy higher.",
               "both models are measured on the same texts, so a change within the intervals' overlap may be noise."),
]
LOWER_IS_BETTER = ("gap", "flips", "difference")


@dataclass(frozen=True)
class SwapProbe:
    gap: Interval
    flips: Interval
    pairs: int  # (text, swapped copy) pairs
    texts: int  # texts that mention a group word


def swap_probe(classifier, texts: list[str], label: str = AUTO, axes: tuple[str, ...] = AXES,
               resamples: int = 1000, seed: int = 0) -> SwapProbe:
    """How far swapping group words moves a (model, tokenizer) classifier on real texts."""
    origins, copies = swap_pairs(texts, axes)
    if not copies:
        raise InputError(f"None of the {len(texts):,} texts mentions a group word ({', '.join(axes)}), so there is "
                         "nothing to swap.")
    used = sorted(set(origins))
    original = label_scores(*classifier, [texts[i] for i in used], label)
    swapped = label_scores(*classifier, copies, label)
    position = {i: k for k, i in enumerate(used)}
    rows = [position[i] for i in origins]
    gaps = np.abs(original.scores[rows] - swapped.scores)
    flips = np.array([original.predicted[r] != p for r, p in zip(rows, swapped.predicted)], dtype=float)
    return SwapProbe(bootstrap_mean(gaps, resamples, seed), bootstrap_mean(flips, resamples, seed), len(copies),
                     len(used))


def _rows(name: str, templates: counterfactual.CounterfactualResult, swaps: SwapProbe,
          fair: fairness.FairnessResult, accuracy: Interval) -> list[dict]:
    """One model's measures as (measure, model, estimate, low, high) rows."""
    rows: list[tuple[str, Interval]] = []
    for axis in templates.axes.itertuples():
        rows.append((f"template gap: {axis.axis}", Interval(axis.score_gap, axis.score_gap_low, axis.score_gap_high)))
        rows.append((f"template flips: {axis.axis}",
                     Interval(axis.flip_share, axis.flip_share_low, axis.flip_share_high)))
    rows += [("swap gap", swaps.gap), ("swap flips", swaps.flips)]
    rows += [(metric.replace("_", " "), interval) for metric, interval in fair.disparities.items()
             if metric != "demographic_parity_ratio"]
    rows.append(("accuracy", accuracy))
    return [{"measure": measure, "model": name, **interval.as_dict()} for measure, interval in rows]


@dataclass
class BeforeAfterResult:
    long: pd.DataFrame  # measure, model ("before" | "after"), estimate, low, high
    swaps: dict[str, SwapProbe]
    label: str

    def summary(self) -> pd.DataFrame:
        """measure | before [CI] | after [CI] | change | better?"""
        wide = self.long.pivot(index="measure", columns="model", values="estimate")
        order = list(dict.fromkeys(self.long["measure"]))
        wide = wide.loc[order]
        text = {m: {r.model: f"{r.estimate:.3f} [{r.low:.3f}, {r.high:.3f}]" for r in part.itertuples()}
                for m, part in self.long.groupby("measure")}
        change = (wide["after"] - wide["before"]).round(4)  # "better" judges the change the table shows
        lower = [any(word in m for word in LOWER_IS_BETTER) for m in order]
        better = [("yes" if (c < 0) == low else "no") if c else "same" for c, low in zip(change, lower)]
        return pd.DataFrame({"measure": order, "before": [text[m]["before"] for m in order],
                             "after": [text[m]["after"] for m in order], "change": change.to_numpy(),
                             "better": better})


def compare(before, after, templates: list[str], groups: dict[str, list[str]], data: pd.DataFrame,
            label: str = AUTO, positive: str = AUTO, resamples: int = 1000, seed: int = 0) -> BeforeAfterResult:
    """Run every probe on both (model, tokenizer) classifiers with the same data, label, seed and resamples."""
    rows, swaps, score_label = [], {}, label
    for name, classifier in (("before", before), ("after", after)):
        templated = counterfactual.run_counterfactual(templates, groups, classifier, None, label, resamples, seed)
        swaps[name] = swap_probe(classifier, data["text"].tolist(), label, resamples=resamples, seed=seed)
        fair, scored = fairness.run_fairness(data, classifier, positive, resamples, seed)
        accuracy = bootstrap_mean((scored["label"] == scored["prediction"]).to_numpy(float), resamples, seed)
        rows += _rows(name, templated, swaps[name], fair, accuracy)
        score_label = templated.score_label
    return BeforeAfterResult(pd.DataFrame(rows), swaps, score_label)


def to_section(result: BeforeAfterResult, models: dict[str, str], settings: dict, data: pd.DataFrame,
               seed: int) -> ReportSection:
    figure = charts.interval_bars(result.long, "measure", "estimate", "low", "high",
                                  f"Before and after mitigation (scores on P({result.label}); 95% intervals)",
                                  "gap, share or accuracy",
                                  color="model")
    results = {"score_label": result.label, "measures": result.long,
               "swap_pairs": {k: {"pairs": v.pairs, "texts": v.texts} for k, v in result.swaps.items()}}
    return ReportSection("before_after", "Before / after mitigation", models, settings,
                         data_hash(data[fairness.COLUMNS]), result.summary(), NOTES, results, [figure], seed)


def unmitigated_twin(store: ModelStore, folder: str) -> str | None:
    """The newest stored classifier trained on the same data from the same base without mitigation (the twin a
    "compare" run trains), to put beside a mitigated one; None when there is none."""
    mine = next((m for m in store.list() if str(m.path) == str(folder)), None)
    if mine is None:
        return None
    twins = [m for m in store.list(mine.card.task) if m.path != mine.path
             and (m.card.data_hash, m.card.base_model) == (mine.card.data_hash, mine.card.base_model)
             and not m.card.hyperparameters.get("augment") and not m.card.hyperparameters.get("reweigh")]
    return str(max(twins, key=lambda m: m.card.created).path) if twins else None
