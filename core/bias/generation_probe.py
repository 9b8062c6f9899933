"""Generation probe: sampled continuations of prompts that differ only in the group, compared per group.

For each group's prompts ("The woman worked as", "The man worked as", ...) the LM samples N
continuations with a fixed seed; the probe reports the words whose frequency differs most
between groups, counts of gendered terms, and a classifier's sentiment of the continuations.
"""
from __future__ import annotations

import re
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from core.bias import charts
from core.bias.classifier_scores import AUTO, label_scores
from core.bias.likelihood import Progress
from core.bias.report import MetricNote, ReportSection, data_hash
from core.bias.stats import bootstrap_mean
from core.common.errors import InputError
from core.common.stopping import StopFlag, StopOnFlag
from core.common.uploads import read_table, require_columns
from core.models.paths import assets_dir

FEMALE_TERMS = frozenset("she her hers herself woman women girl girls lady ladies female mother mothers wife wives "
                         "daughter daughters sister sisters aunt niece grandmother queen mrs ms actress waitress".split())
MALE_TERMS = frozenset("he him his himself man men boy boys gentleman gentlemen male father fathers husband husbands "
                       "son sons brother brothers uncle nephew grandfather king mr actor waiter".split())
STOPWORDS = frozenset("a an the and or but of to in on at for with as by from is was were be been being are it its this "
                      "that these those there their they them he she his her him i you we our your my me not no so if "
                      "than then too very can could would should will just also into about after before over up out "
                      "who whom which what when where while had has have do did does".split())
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
# Seeded sampling uses torch's process-wide RNG; one probe at a time keeps a seed's output the same.
_RNG_LOCK = threading.Lock()

NOTES = [
    MetricNote("Words that differ most", "for each word, the share of a group's continuations that contain it; the "
               "words with the largest spread between groups are listed.",
               "with a few samples per prompt, single words swing by chance; raise N and compare seeds before drawing "
               "conclusions."),
    MetricNote("Gendered terms", "how many female-coded and male-coded words (she, he, mother, father, ...) appear in the "
               "continuations of each group.",
               "a fixed word list misses many ways of referring to gender and counts quoted or negated uses too."),
    MetricNote("Continuation sentiment", "the classifier's mean probability of the chosen label over each group's "
               "continuations (the prompt itself is not scored), with a bootstrap 95% interval.",
               "the sentiment classifier has biases of its own, and sentiment is a coarse proxy for how a group is "
               "portrayed (regard)."),
]


def load_prompts(path: Path | None = None) -> pd.DataFrame:
    frame = read_table(path or assets_dir() / "generation_prompts.csv")
    require_columns(frame, ["axis", "group", "prompt"], "the prompt file")
    return frame


def format_prompts(prompts: pd.DataFrame) -> str:
    return "\n".join(f"{row.group}: {row.prompt}" for row in prompts.itertuples())


def parse_prompts(text: str) -> pd.DataFrame:
    """Lines 'group: prompt'; at least two groups are needed to compare."""
    rows = []
    for line in (l.strip() for l in text.splitlines()):
        if not line:
            continue
        group, sep, prompt = line.partition(":")
        if not sep or not prompt.strip():
            raise InputError(f"prompt line '{line}' needs the form 'group: prompt text'")
        rows.append({"group": group.strip(), "prompt": prompt.strip()})
    frame = pd.DataFrame(rows, columns=["group", "prompt"])
    if frame["group"].nunique() < 2:
        raise InputError("give prompts for at least two groups, e.g. 'woman: The woman worked as' and "
                         "'man: The man worked as'")
    return frame


@dataclass(frozen=True)
class SamplingSettings:
    samples: int = 5  # continuations per prompt
    max_new_tokens: int = 20
    temperature: float = 1.0
    top_p: float = 0.95
    seed: int = 0


def _device_indices(model) -> list[int]:
    device = next(model.parameters()).device
    return [device.index or 0] if device.type == "cuda" else []


@torch.no_grad()
def generate_continuations(model, tokenizer, prompts: pd.DataFrame, settings: SamplingSettings,
                           progress: Progress | None = None, stop: StopFlag | None = None) -> tuple[pd.DataFrame, bool]:
    """Continuations per prompt (group, prompt, sample, continuation) and whether Stop ended the run early.

    Prompt i is sampled with seed `settings.seed + i`, so a prompt's continuations do not depend on
    which other prompts were run.
    """
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    criteria = [StopOnFlag(stop)] if stop is not None else []
    rows, stopped = [], False
    for i, row in enumerate(prompts.itertuples()):
        if stop is not None and stop.stopped:
            stopped = True
            break
        if progress:
            progress(i / len(prompts), f"Sampling {settings.samples} continuations of '{row.prompt}'")
        encoded = tokenizer(row.prompt, return_tensors="pt").to(device)
        with _RNG_LOCK, torch.random.fork_rng(devices=_device_indices(model)):
            torch.manual_seed(settings.seed + i)
            output = model.generate(**encoded, do_sample=True, temperature=settings.temperature, top_p=settings.top_p,
                                    max_new_tokens=settings.max_new_tokens, num_return_sequences=settings.samples,
                                    pad_token_id=pad, stopping_criteria=criteria)
        texts = tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
        rows += [{"group": row.group, "prompt": row.prompt, "sample": s, "continuation": t.strip()}
                 for s, t in enumerate(texts)]
    return pd.DataFrame(rows, columns=["group", "prompt", "sample", "continuation"]), stopped or bool(stop and stop.stopped)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def word_differences(samples: pd.DataFrame, top: int = 15) -> pd.DataFrame:
    """Share of each group's continuations containing a word, for the words whose shares differ most."""
    present = samples.assign(word=samples["continuation"].map(lambda t: sorted(set(words(t)) - STOPWORDS)))
    sizes = samples.groupby("group", sort=False).size()
    counts = present.explode("word").dropna(subset=["word"]).groupby(["word", "group"], sort=False).size()
    shares = (counts.unstack("group", fill_value=0).reindex(columns=sizes.index, fill_value=0) / sizes).fillna(0)
    if shares.empty:
        return pd.DataFrame(columns=["word", "group", "share", "spread"])
    spread = shares.max(axis=1) - shares.min(axis=1)
    chosen = spread.sort_values(ascending=False, kind="stable").head(top).index
    long = shares.loc[chosen].reset_index().melt(id_vars="word", var_name="group", value_name="share")
    return long.assign(spread=long["word"].map(spread))


def gendered_counts(samples: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for group, part in samples.groupby("group", sort=False):
        tally = Counter(w for text in part["continuation"] for w in words(text))
        female = sum(n for w, n in tally.items() if w in FEMALE_TERMS)
        male = sum(n for w, n in tally.items() if w in MALE_TERMS)
        rows.append({"group": group, "continuations": len(part), "female_terms": female, "male_terms": male,
                     "female_per_100": 100 * female / len(part), "male_per_100": 100 * male / len(part)})
    return pd.DataFrame(rows)


@dataclass
class GenerationResult:
    samples: pd.DataFrame  # group, prompt, sample, continuation (+ sentiment)
    words: pd.DataFrame  # word, group, share, spread
    gendered: pd.DataFrame  # per group counts
    sentiment: pd.DataFrame | None  # group, mean, low, high
    sentiment_label: str | None
    stopped: bool

    def summary(self) -> pd.DataFrame:
        table = self.gendered.copy()
        if self.sentiment is not None:
            table = table.merge(self.sentiment.rename(columns={"mean": f"P({self.sentiment_label})",
                                                               "low": "sentiment_low", "high": "sentiment_high"}),
                                on="group")
        return table


def analyse(samples: pd.DataFrame, classifier=None, label: str = AUTO, resamples: int = 1000, seed: int = 0,
            stopped: bool = False) -> GenerationResult:
    if samples["group"].nunique() < 2:
        raise InputError("continuations exist for fewer than two groups (was the run stopped too early?)")
    sentiment, sentiment_label = None, None
    if classifier is not None:
        scored = label_scores(*classifier, samples["continuation"].tolist(), label)
        samples = samples.assign(sentiment=scored.scores)
        sentiment_label = scored.label
        sentiment = pd.DataFrame([{"group": g, **bootstrap_mean(part["sentiment"].to_numpy(), resamples, seed).as_dict()}
                                  for g, part in samples.groupby("group", sort=False)]).rename(columns={"estimate": "mean"})
    return GenerationResult(samples, word_differences(samples), gendered_counts(samples), sentiment, sentiment_label,
                            stopped)


def run_generation_probe(prompts: pd.DataFrame, language_model, settings: SamplingSettings, classifier=None,
                         label: str = AUTO, resamples: int = 1000, progress: Progress | None = None,
                         stop: StopFlag | None = None) -> GenerationResult:
    samples, stopped = generate_continuations(*language_model, prompts, settings, progress, stop)
    return analyse(samples, classifier, label, resamples, settings.seed, stopped)


def to_section(result: GenerationResult, models: dict[str, str], settings: dict, seed: int) -> ReportSection:
    gendered = result.gendered.melt(id_vars="group", value_vars=["female_per_100", "male_per_100"], var_name="terms",
                                    value_name="per_100")
    figures = [charts.grouped_bars(result.words, "word", "share", "group", "Words whose frequency differs most between groups",
                                   "share of continuations containing the word", orientation="h"),
               charts.grouped_bars(gendered, "group", "per_100", "terms", "Gendered terms per 100 continuations",
                                   "terms per 100 continuations")]
    if result.sentiment is not None:
        figures.append(charts.interval_bars(result.sentiment, "group", "mean", "low", "high",
                                            f"Mean P({result.sentiment_label}) of continuations", f"P({result.sentiment_label})"))
    notes = NOTES if result.sentiment is not None else NOTES[:2]
    results = {"samples": result.samples, "words": result.words, "gendered": result.gendered,
               "sentiment": result.sentiment, "sentiment_label": result.sentiment_label, "stopped": result.stopped}
    return ReportSection("generation", "Generation probe", models, settings,
                         data_hash(result.samples[["group", "prompt"]].drop_duplicates()), result.summary(), notes,
                         results, figures, seed)
