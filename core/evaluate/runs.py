"""Evaluation runs: one text or task, several models at several precisions, one table.

Each (model, precision) is served by the shared chat engines (`ChatRuntimes.serve`), exactly as Chat and the API get
it, and scored through its engine's `exclusive` in small batches. A model that cannot load, or fails while it is
scored, gets a row saying why and the run goes on with the next. Runs are plain data: a user's `History` (kept in
their gr.State) exports them as CSV or JSON with model ids, precisions, settings and the data's sha256.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd

from core.chat.serving import PRECISION_CHOICES, ChatRuntimes, ServedModel
from core.common.errors import InputError, PlaygroundError, StoppedError, check_number
from core.common.stopping import StopFlag
from core.evaluate.multiple_choice import ChoiceScores, ChoiceTask, item_requests, judge
from core.evaluate.perplexity import PerplexityResult, scored_bytes, text_ids, window_length, windowed_perplexity
from core.evaluate.scoring import BatchLimits, score_requests

Progress = Callable[[float, str], None]
PERPLEXITY, MULTIPLE_CHOICE = "perplexity", "multiple choice"
MAX_MODELS = 6  # (model, precision) pairs in one run
log = logging.getLogger("llm_playground")


@dataclass(frozen=True)
class ModelSpec:
    model_id: str
    precision: str = "auto"  # "auto": what Chat serves (the measured choice)

    @property
    def label(self) -> str:
        return f"{self.model_id} [{self.precision}]"


def model_specs(model_ids: list[str], precisions: list[str]) -> list[ModelSpec]:
    """Every model at every precision, checked: at least one of each, known precision names, at most MAX_MODELS."""
    ids = list(dict.fromkeys(m.strip() for m in model_ids if m and m.strip()))
    if not ids:
        raise InputError("Models: pick at least one model (or type a Hugging Face id or a local folder).")
    if not precisions:
        raise InputError("Precisions: tick at least one (auto is what the Chat tab serves).")
    unknown = [p for p in precisions if p not in PRECISION_CHOICES]
    if unknown:
        raise InputError(f"Precisions: unknown {', '.join(unknown)}; choose from {', '.join(PRECISION_CHOICES)}.")
    specs = [ModelSpec(m, p) for m in ids for p in dict.fromkeys(precisions)]
    if len(specs) > MAX_MODELS:
        raise InputError(f"{len(ids)} models × {len(set(precisions))} precisions make {len(specs)} runs; one evaluation "
                         f"takes at most {MAX_MODELS}: untick some.")
    return specs


@dataclass(frozen=True)
class EvaluateSettings:
    max_length: int = 512  # tokens one perplexity window reads (less when a model's context is shorter)
    stride: int = 256
    max_text_tokens: int = 100_000
    fewshot: str = ""  # put before every question
    delimiter: str = " "  # between the question and each choice, as lm-eval's target_delimiter
    resamples: int = 1000  # bootstrap
    seed: int = 0
    limits: BatchLimits = field(default_factory=BatchLimits)

    def __post_init__(self) -> None:
        length = check_number("Window length", self.max_length, 16, 32_768, integer=True)
        object.__setattr__(self, "max_length", length)
        object.__setattr__(self, "stride", check_number("Stride", self.stride, 1, length, integer=True))
        object.__setattr__(self, "resamples", check_number("Bootstrap resamples", self.resamples, 100, 20_000,
                                                           integer=True))


@dataclass
class ModelRow:
    model_id: str
    precision: str
    runtime: str = ""  # what served it, e.g. "ONNX Runtime · int8 on cpu"
    status: str = "ok"  # "ok" | "failed" | "stopped"
    message: str = ""
    seconds: float | None = None
    perplexity: float | None = None
    bits_per_byte: float | None = None
    tokens: int | None = None  # tokens scored
    bytes: int | None = None
    windows: int | None = None
    context: int | None = None  # tokens each window read at most
    stride: int | None = None
    items: int | None = None
    acc: float | None = None
    acc_low: float | None = None
    acc_high: float | None = None
    acc_norm: float | None = None
    acc_norm_low: float | None = None
    acc_norm_high: float | None = None


@dataclass
class EvaluationRun:
    kind: str
    data: str  # the text's or task's name
    data_sha256: str
    settings: dict
    rows: list[ModelRow] = field(default_factory=list)
    item_results: dict[str, pd.DataFrame] = field(default_factory=dict)  # multiple choice: model label -> items
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def frame(self) -> pd.DataFrame:
        """One row per model, with the columns this kind of run fills."""
        frame = pd.DataFrame([asdict(r) for r in self.rows])
        return frame.dropna(axis=1, how="all") if not frame.empty else frame

    def items_frame(self) -> pd.DataFrame:
        frames = [items.assign(model=label) for label, items in self.item_results.items()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def as_dict(self) -> dict:
        return {"kind": self.kind, "data": self.data, "data_sha256": self.data_sha256, "settings": self.settings,
                "created": self.created, "rows": [asdict(r) for r in self.rows],
                "items": {label: items.to_dict("records") for label, items in self.item_results.items()}}


@dataclass
class History:
    """One user's finished runs (kept in their gr.State)."""

    runs: list[EvaluationRun] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        frames = [run.frame().assign(kind=run.kind, data=run.data, data_sha256=run.data_sha256, created=run.created,
                                     settings=json.dumps(run.settings)) for run in self.runs]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def write(self, folder: Path) -> tuple[Path, Path]:
        """evaluation_runs.csv (one row per model and run) and evaluation_runs.json (everything, items included)."""
        folder.mkdir(parents=True, exist_ok=True)
        csv, js = folder / "evaluation_runs.csv", folder / "evaluation_runs.json"
        self.frame().to_csv(csv, index=False)
        js.write_text(json.dumps([run.as_dict() for run in self.runs], indent=1, default=str), encoding="utf-8")
        return csv, js


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---- measuring one served model ---------------------------------------------------------------------------------------
def served_perplexity(served: ServedModel, text: str, settings: EvaluateSettings, progress: Progress | None = None,
                      stop: StopFlag | None = None) -> PerplexityResult:
    """Perplexity and bits per byte of a text on a served model, through its engine."""
    ids = text_ids(served.tokenizer, text)
    if len(ids) > settings.max_text_tokens:
        raise InputError(f"The text is {len(ids):,} tokens for {served.model_id}; the limit is "
                         f"{settings.max_text_tokens:,}: evaluate a shorter part of it.")
    return windowed_perplexity(served.engine.exclusive, ids, window_length(settings.max_length, served.context),
                               settings.stride, scored_bytes(served.tokenizer, text, len(ids)), settings.limits,
                               progress, stop)


def served_choices(served: ServedModel, task: ChoiceTask, settings: EvaluateSettings, progress: Progress | None = None,
                   stop: StopFlag | None = None) -> ChoiceScores:
    requests = [r for item in task.items for r in item_requests(served.tokenizer, item, settings.fewshot,
                                                                settings.delimiter, served.context)]
    scores = score_requests(served.engine.exclusive, requests, 0, settings.limits, progress, stop, "choices")
    return judge(task, scores, settings.resamples, settings.seed)


# ---- the run ----------------------------------------------------------------------------------------------------------
def _measure_each(runtimes: ChatRuntimes, specs: list[ModelSpec], run: EvaluationRun,
                  measure: Callable[[ServedModel, ModelRow, Progress], None], progress: Progress | None,
                  stop: StopFlag | None) -> Iterator[EvaluationRun]:
    """Serve and measure each spec in turn; yields the run after each row. One model's failure is its row only."""
    report = progress or (lambda *_: None)
    for n, spec in enumerate(specs):
        if stop is not None and stop.stopped:
            return
        sub = lambda f, msg, n=n, spec=spec: report((n + f) / len(specs), f"{spec.label} ({n + 1}/{len(specs)}): {msg}")  # noqa: E731
        row, start = ModelRow(spec.model_id, spec.precision), time.perf_counter()
        try:
            served = runtimes.serve(spec.model_id, precision=spec.precision, progress=sub)
            row.runtime = served.backend.describe()
            measure(served, row, sub)
        except StoppedError as err:
            row.status, row.message = "stopped", str(err)
        except PlaygroundError as err:
            row.status, row.message = "failed", str(err)
        except Exception as err:  # a bug in one model's path must not lose the others' rows
            log.exception("evaluating %s failed", spec.label)
            row.status, row.message = "failed", f"{type(err).__name__}: {err}"[:300]
        row.seconds = time.perf_counter() - start
        run.rows.append(row)
        yield run


def evaluate_perplexity(runtimes: ChatRuntimes, specs: list[ModelSpec], text: str, data_name: str,
                        settings: EvaluateSettings = EvaluateSettings(), progress: Progress | None = None,
                        stop: StopFlag | None = None) -> Iterator[EvaluationRun]:
    """Perplexity and bits per byte of one text for every spec; yields the growing run after each model."""
    if not text.strip():
        raise InputError("The text is empty: paste some text, upload a .txt file, or use the built-in sample.")
    run = EvaluationRun(PERPLEXITY, data_name, sha256_text(text), asdict(settings))

    def measure(served: ServedModel, row: ModelRow, sub: Progress) -> None:
        result = served_perplexity(served, text, settings, sub, stop)
        row.perplexity, row.bits_per_byte, row.tokens, row.bytes = (result.perplexity, result.bits_per_byte,
                                                                    result.tokens, result.bytes)
        row.windows, row.context, row.stride = result.windows, result.context, result.stride

    yield from _measure_each(runtimes, specs, run, measure, progress, stop)


def evaluate_choices(runtimes: ChatRuntimes, specs: list[ModelSpec], task: ChoiceTask,
                     settings: EvaluateSettings = EvaluateSettings(), progress: Progress | None = None,
                     stop: StopFlag | None = None) -> Iterator[EvaluationRun]:
    """acc and acc_norm of one task for every spec, with per-item results; yields the run after each model."""
    run = EvaluationRun(MULTIPLE_CHOICE, task.name, task.sha256, asdict(settings) | {"source": task.source})

    def measure(served: ServedModel, row: ModelRow, sub: Progress) -> None:
        scores = served_choices(served, task, settings, sub, stop)
        row.items = scores.n_items
        row.acc, row.acc_low, row.acc_high = scores.acc.estimate, scores.acc.low, scores.acc.high
        row.acc_norm, row.acc_norm_low, row.acc_norm_high = (scores.acc_norm.estimate, scores.acc_norm.low,
                                                             scores.acc_norm.high)
        run.item_results[ModelSpec(row.model_id, row.precision).label] = scores.items

    yield from _measure_each(runtimes, specs, run, measure, progress, stop)
