"""Measure compressed variants of one model side by side: size, speed, memory and quality, in one run.

The fp32 model is always measured first: it is the reference for size and speed ratios and
for agreement (top-1 next token or predicted class, and KL divergence of the distributions).
Results are yielded after every variant so a caller can show progress and stop in between.
"""
from __future__ import annotations

import gc
import math
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
import psutil
import torch
import torch.nn.functional as F

from core.common.errors import InputError, StoppedError, check_number
from core.common.stopping import StopFlag
from core.common.uploads import UploadError, read_table, require_columns
from core.models.manager import Fp32Figures
from core.models.registry import CAUSAL_LM
from core.evaluate.perplexity import encode, scored_windows
from core.quantize.variants import VARIANTS, CompressionOptions, build_variant, calibrated, unavailable_reason

Progress = Callable[[float, str], None]
BASELINE = "fp32"


@dataclass(frozen=True)
class EvalSettings:
    max_length: int = 512  # perplexity window
    stride: int = 256
    max_eval_tokens: int = 2048  # longer texts are cut: the fp32 log-probs of every token are kept for KL
    prefill_tokens: int = 64
    decode_tokens: int = 16
    repeats: int = 2  # timings keep the best of this many runs

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_eval_tokens",
                           check_number("Evaluation tokens", self.max_eval_tokens, 16, 65_536, integer=True))
        object.__setattr__(self, "decode_tokens", check_number("Decode tokens", self.decode_tokens, 1, 1024, integer=True))


@dataclass(frozen=True)
class LabelledTexts:
    texts: list[str]
    labels: list[str]


@dataclass
class VariantResult:
    variant: str
    status: str  # "ok" | "unavailable" | "failed"
    description: str
    notes: str = ""
    size_mb: float | None = None
    size_ratio: float | None = None  # fp32 bytes / variant bytes
    compressed_share: float | None = None
    conversion_s: float | None = None
    peak_rss_mb: float | None = None
    prefill_ms: float | None = None
    decode_tok_s: float | None = None
    speed_ratio: float | None = None  # decode tok/s (classifiers: forward latency) relative to fp32
    perplexity: float | None = None
    accuracy: float | None = None
    top1_agreement: float | None = None
    mean_kl: float | None = None


@dataclass
class Comparison:
    model_id: str
    task: str
    eval_tokens: int  # tokens (LM) or texts (classifier) evaluated
    results: list[VariantResult] = field(default_factory=list)
    threads: int = field(default_factory=torch.get_num_threads)

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame([asdict(r) for r in self.results]).dropna(axis=1, how="all")
        frame = frame[[c for c in frame if c not in ("description", "notes")] + ["notes", "description"]]  # long text last
        for column in frame.select_dtypes("number"):
            # 4 significant digits: KL divergences are tiny, sizes and speeds are not
            frame[column] = frame[column].map(lambda x: float(f"{x:.4g}"), na_action="ignore")
        return frame

    def ok(self) -> list[VariantResult]:
        return [r for r in self.results if r.status == "ok"]

    def against_fp32(self, variant: str, text: str) -> Fp32Figures | None:
        """A measured language-model variant's agreement and perplexity next to fp32's, to travel with the variant
        (None for classifiers and for variants this comparison did not measure)."""
        rows = {r.variant: r for r in self.ok()}
        row, base = rows.get(variant), rows.get(BASELINE)
        if self.task != CAUSAL_LM or row is None or base is None:
            return None
        return Fp32Figures(row.top1_agreement, row.perplexity, base.perplexity, self.eval_tokens, text, "Quantize")


# ---- measures ------------------------------------------------------------------------------------
class _ByteCounter:
    """A write-only file that counts what torch.save writes, so sizing a model costs no memory."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data) -> int:
        self.bytes += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def serialized_bytes(model: torch.nn.Module) -> int:
    """Bytes torch.save writes for the state_dict (shared tensors such as tied embeddings stored once)."""
    counter = _ByteCounter()
    torch.save(model.state_dict(), counter)
    return counter.bytes


class PeakRss:
    """Peak resident memory above the starting point, sampled by psutil every 5 ms in a thread.

    Process RSS rather than tracemalloc: tracemalloc sees only Python's allocator, not tensor memory.
    """

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self._done = threading.Event()
        self.start = self.peak = self._proc.memory_info().rss

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> "PeakRss":
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def increase_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def _best_seconds(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up: first calls allocate and pick kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def lm_speed(model, ids: torch.Tensor, settings: EvalSettings) -> tuple[float, float]:
    """(prefill ms for the prompt, greedy decode tokens/s with the KV cache, prefill excluded)."""
    prompt = ids[:, : settings.prefill_tokens]
    prefill = _best_seconds(lambda: model(prompt, use_cache=True), settings.repeats)

    def decode() -> None:
        out = model(prompt, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(settings.decode_tokens):
            out = model(nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        timings.append(time.perf_counter() - start)

    timings: list[float] = []
    decode()  # warm-up
    timings.clear()
    for _ in range(settings.repeats):
        decode()
    return prefill * 1000, settings.decode_tokens / min(timings)


def _kl_and_agreement(log_p: torch.Tensor, log_q: torch.Tensor) -> tuple[float, int]:
    """(sum over rows of KL(P || Q), rows whose argmax agree) for log-prob rows."""
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0).sum().item()
    return kl, int((log_p.argmax(-1) == log_q.argmax(-1)).sum())


class LMReference:
    """fp32 log-probs of every scored token, for agreement and KL of each variant."""

    def __init__(self, ids: torch.Tensor, settings: EvalSettings):
        self.ids, self.settings = ids, settings
        self.log_probs: list[torch.Tensor] = []

    def evaluate(self, model, result: VariantResult) -> None:
        nll, scored, kl, agree = 0.0, 0, 0.0, 0
        first = not self.log_probs
        for i, (logits, targets) in enumerate(scored_windows(model, self.ids, self.settings.max_length, self.settings.stride)):
            log_q = F.log_softmax(logits, -1)
            if first:
                self.log_probs.append(log_q)
            window_kl, window_agree = _kl_and_agreement(self.log_probs[i], log_q)
            nll -= log_q.gather(1, targets[:, None]).sum().item()
            scored, kl, agree = scored + targets.numel(), kl + window_kl, agree + window_agree
        result.perplexity = math.exp(nll / scored)
        result.top1_agreement, result.mean_kl = agree / scored, kl / scored
        result.prefill_ms, result.decode_tok_s = lm_speed(model, self.ids, self.settings)


class ClassifierReference:
    """fp32 class log-probs per text, for accuracy, agreement and KL of each variant."""

    def __init__(self, data: LabelledTexts, settings: EvalSettings):
        self.data, self.settings = data, settings
        self.log_probs: torch.Tensor | None = None

    @torch.no_grad()
    def _log_probs(self, model, tokenizer) -> torch.Tensor:
        from core.classify.classifier import predict_proba

        probs = predict_proba(model, tokenizer, self.data.texts).probs
        return torch.from_numpy(probs).double().clamp_min(1e-12).log()

    def evaluate(self, model, tokenizer, result: VariantResult) -> None:
        from core.classify.classifier import class_labels

        log_q = self._log_probs(model, tokenizer)
        if self.log_probs is None:
            self.log_probs = log_q
        kl, agree = _kl_and_agreement(self.log_probs, log_q)
        names = class_labels(model)
        predicted = [names[i] for i in log_q.argmax(-1).tolist()]
        result.accuracy = sum(_same_label(p, g, names) for p, g in zip(predicted, self.data.labels)) / len(predicted)
        result.top1_agreement, result.mean_kl = agree / len(predicted), kl / len(predicted)
        batch = tokenizer(self.data.texts[:8], padding=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            result.prefill_ms = _best_seconds(lambda: model(**batch), self.settings.repeats) * 1000


def _same_label(predicted: str, gold: str, names: list[str]) -> bool:
    """Gold labels may be class names (any case) or class indices."""
    gold = str(gold).strip()
    if gold.isdigit() and int(gold) < len(names):
        gold = names[int(gold)]
    return predicted.lower() == gold.lower()


def read_labelled_csv(path: str | Path, max_rows: int = 2000) -> LabelledTexts:
    frame = read_table(path, max_rows=max_rows)
    require_columns(frame, ["text", "label"], Path(path).name)
    frame = frame[frame["text"].astype(str).str.strip() != ""]
    if frame.empty:
        raise UploadError(f"{Path(path).name} has no non-empty texts.")
    return LabelledTexts(frame["text"].astype(str).tolist(), frame["label"].astype(str).tolist())


# ---- the run --------------------------------------------------------------------------------------
def _measure(name: str, fp32, tokenizer, reference, opts: CompressionOptions) -> VariantResult:
    result = VariantResult(name, "ok", VARIANTS[name].description)
    with PeakRss() as memory:
        start = time.perf_counter()
        built = build_variant(name, fp32, opts)
        result.conversion_s = time.perf_counter() - start
        if isinstance(reference, LMReference):
            reference.evaluate(built.model, result)
        else:
            reference.evaluate(built.model, tokenizer, result)
    result.peak_rss_mb = memory.increase_mb
    result.size_mb = (built.size_bytes or serialized_bytes(built.model)) / 2**20
    result.compressed_share = built.compressed_share
    result.notes = "; ".join(built.notes)
    return result


def _add_ratios(comparison: Comparison, result: VariantResult) -> None:
    base = comparison.results[0] if comparison.results else result
    if result.status != "ok" or base.status != "ok":
        return
    result.size_ratio = base.size_mb / result.size_mb
    if result.decode_tok_s is not None:
        result.speed_ratio = result.decode_tok_s / base.decode_tok_s
    elif result.prefill_ms:
        result.speed_ratio = base.prefill_ms / result.prefill_ms


def compare_variants(model_id: str, task: str, fp32, tokenizer, variants: list[str], evaluation: str | LabelledTexts,
                     opts: CompressionOptions = CompressionOptions(), settings: EvalSettings = EvalSettings(),
                     device: str = "cpu", progress: Progress | None = None, stop: StopFlag | None = None
                     ) -> Iterator[Comparison]:
    """Measure fp32 and each requested variant; yields the growing comparison after each one.

    `evaluation` is a text (causal LMs: perplexity, agreement, speed) or labelled texts (classifiers).
    Variants that cannot run here are listed with their reason; a variant that fails is listed with its error.
    """
    report = progress or (lambda *_: None)
    if not opts.calibration_ids:
        opts = calibrated(opts, tokenizer)
    opts = replace(opts, stop=stop)  # long builds (healing) check it between steps
    names = [BASELINE] + [v for v in dict.fromkeys(variants) if v != BASELINE]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise InputError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if task == CAUSAL_LM:
        if not isinstance(evaluation, str):
            raise InputError("a causal language model is evaluated on a text")
        ids = encode(fp32, tokenizer, evaluation)[:, : settings.max_eval_tokens]
        reference: LMReference | ClassifierReference = LMReference(ids, settings)
        size = ids.shape[1]
    else:
        if not isinstance(evaluation, LabelledTexts):
            raise InputError("a classifier is evaluated on labelled texts (a CSV with text,label columns)")
        reference, size = ClassifierReference(evaluation, settings), len(evaluation.texts)
    comparison = Comparison(model_id, task, size)
    for i, name in enumerate(names):
        if stop is not None and stop.stopped:
            report(1.0, f"Stopped after {i} of {len(names)} variants")
            return
        report(i / len(names), f"Variant {i + 1}/{len(names)}: {name}")
        reason = unavailable_reason(name, device)
        if reason:
            result = VariantResult(name, "unavailable", VARIANTS[name].description, reason)
        else:
            try:
                result = _measure(name, fp32, tokenizer, reference, opts)
            except StoppedError:
                report(1.0, f"Stopped during variant {i + 1} of {len(names)}")
                return
            except Exception as err:  # one broken backend must not lose the other variants' results
                if name == BASELINE:
                    raise
                result = VariantResult(name, "failed", VARIANTS[name].description, f"{type(err).__name__}: {err}"[:300])
            gc.collect()
        _add_ratios(comparison, result)
        comparison.results.append(result)
        yield comparison
    report(1.0, f"Measured {len(comparison.ok())} of {len(names)} variants")


# ---- charts --------------------------------------------------------------------------------------
def size_quality_figure(comparison: Comparison):
    """Serialized size against perplexity (LMs) or accuracy (classifiers), one labelled point per variant."""
    import plotly.graph_objects as go

    lm = comparison.task == CAUSAL_LM
    rows = [r for r in comparison.ok() if (r.perplexity if lm else r.accuracy) is not None]
    fig = go.Figure(go.Scatter(x=[r.size_mb for r in rows], y=[r.perplexity if lm else r.accuracy for r in rows],
                               mode="markers+text", text=[r.variant for r in rows], textposition="top center",
                               marker={"size": 12, "color": [r.compressed_share for r in rows], "colorscale": "Viridis",
                                       "colorbar": {"title": "share<br>compressed"}, "cmin": 0, "cmax": 1}))
    fig.update_layout(title=f"Size vs {'perplexity (lower is better)' if lm else 'accuracy'}", height=380,
                      xaxis_range=_padded([r.size_mb for r in rows]), yaxis_range=_padded(fig.data[0].y),
                      xaxis_title="serialized size (MiB)", yaxis_title="perplexity" if lm else "accuracy",
                      margin={"l": 50, "r": 20, "t": 50, "b": 40})
    return fig


def _padded(values, share: float = 0.2) -> list[float] | None:
    """Axis range with room around the points, so their text labels are not cut at the plot's edge."""
    if not values:
        return None
    low, high = min(values), max(values)
    pad = (high - low) * share or abs(high) * 0.1 or 1.0
    return [low - pad, high + pad]


def speed_figure(comparison: Comparison):
    """Decode tokens/s (LMs) or forward latency (classifiers) per variant, with the fp32 baseline marked."""
    import plotly.graph_objects as go

    lm = comparison.task == CAUSAL_LM
    rows = comparison.ok()
    values = [r.decode_tok_s if lm else r.prefill_ms for r in rows]
    fig = go.Figure(go.Bar(x=[r.variant for r in rows], y=values, text=[f"{v:.3g}" for v in values],
                           marker_color=["#6366f1" if r.variant != BASELINE else "#94a3b8" for r in rows]))
    fig.update_layout(title=f"{'Decode tokens/s (higher is better)' if lm else 'Forward latency, 8 texts (ms)'}, "
                            f"{comparison.threads} threads", height=380, yaxis_title="tokens/s" if lm else "ms",
                      margin={"l": 50, "r": 20, "t": 50, "b": 40})
    return fig
