"""SHAP token attributions: which words pushed a classifier's classes, or a language model's continuation, up or down.

Both use shap's Partition explainer with a Text masker built from the model's own tokenizer: masked
copies of the text are scored in batches and Owen values are read off a hierarchy of token groups.
The budget (`max_evals`) caps the model evaluations; shap's own default is 500 (GUIDE section 4).
"""
from __future__ import annotations

import html
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import plotly.graph_objects as go
import torch

from core.classify.classifier import class_labels, predict_proba
from core.common.errors import InputError, StoppedError
from core.common.stopping import StopFlag
from core.explain.attention import FittedText, fit_text
from core.explain.residual import continuation_text
from core.models.manager import LoadedModel, Progress
from core.models.registry import CAUSAL_LM, TEXT_CLASSIFICATION

DEFAULT_MAX_EVALS = 300  # per-token detail on a ~20-token sentence within a few seconds on 2 CPU cores
SHAP_DEFAULT_MAX_EVALS = 500  # what shap's Partition explainer uses when not told
DEFAULT_MAX_TOKENS = 64
MAX_TARGET_TOKENS = 16
BATCH_SIZE = 32
_EPS = 1e-7


def load_shap():
    """shap, with its numba helpers run as plain Python.

    shap jit-compiles five small tree helpers with numba on first use in each process: 10-40 s on two
    shared CPU cores (measured), longer than an explanation. Their Python originals give identical values
    (checked to 1e-16) in milliseconds at text sizes; numba's on-disk cache segfaulted on the recursive ones.
    """
    import shap
    from shap.explainers import _partition
    from shap.utils import _masked_model

    for module, name in ((_partition, "lower_credit"), (_masked_model, "_build_fixed_single_output"),
                         (_masked_model, "_build_fixed_multi_output"), (_masked_model, "_init_masks"),
                         (_masked_model, "_rec_fill_masks")):
        helper = getattr(module, name)
        setattr(module, name, getattr(helper, "py_func", helper))
    return shap



@dataclass(frozen=True)
class Attribution:
    tokens: list[str]  # text pieces as the masker split them, whitespace kept, special tokens left out
    values: np.ndarray  # (n_tokens, n_outputs): each token's contribution to each output
    base_values: np.ndarray  # (n_outputs,): the output with every token masked
    output_names: list[str]
    unit: str  # what the outputs measure
    method: str  # shown to the user as the name of what was computed
    model_evals: int  # masked texts the model scored
    batches: int  # forward passes those took
    seconds: float
    fitted: FittedText
    default_output: int  # the predicted class, or the whole continuation

    def strongest(self, output: int, k: int = 12) -> list[tuple[int, str, float]]:
        """(position, token, value) of the k tokens with the largest absolute contribution to `output`, strongest first."""
        order = np.argsort(-np.abs(self.values[:, output]), kind="stable")[:k]
        return [(int(i), self.tokens[i], float(self.values[i, output])) for i in order]

    def summary(self) -> str:
        return (f"{self.method} · {self.model_evals} model evaluations in {self.batches} batches · "
                f"{self.seconds:.1f} s · values in {self.unit}")


class _BatchedScorer:
    """The function shap calls: scores masked texts in batches, counts them, reports progress, obeys Stop."""

    def __init__(self, score: Callable[[list[str]], np.ndarray], max_evals: int, stop: StopFlag | None,
                 progress: Progress | None):
        self.score, self.max_evals, self.stop, self.progress = score, max_evals, stop, progress
        self.evals = self.batches = 0

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = [str(t) for t in texts]
        rows = []
        for start in range(0, len(texts), BATCH_SIZE):
            if self.stop is not None and self.stop.stopped:
                raise StoppedError(f"Stopped after {self.evals} model evaluations.")
            rows.append(self.score(texts[start:start + BATCH_SIZE]))
            self.evals += len(texts[start:start + BATCH_SIZE])
            self.batches += 1
            if self.progress:
                self.progress(min(1.0, self.evals / self.max_evals), f"SHAP: {self.evals} of at most {self.max_evals} model evaluations")
        return np.concatenate(rows)


def _run_partition(scorer: _BatchedScorer, masker, text: str, names: list[str], max_evals: int):
    shap = load_shap()
    explainer = shap.Explainer(scorer, masker, output_names=names, algorithm="partition")
    explanation = explainer([text], max_evals=max_evals, batch_size=BATCH_SIZE, silent=True)
    data = np.asarray(explanation.data[0], dtype=object)
    values = np.asarray(explanation.values[0], dtype=np.float64).reshape(len(data), -1)
    keep = np.array([str(t) != "" for t in data])  # special tokens: shap keeps them unmasked and gives them 0
    return [str(t) for t in data[keep]], values[keep], np.asarray(explanation.base_values[0], dtype=np.float64).reshape(-1)


def _check_budget(max_evals: int) -> int:
    max_evals = int(max_evals)
    if max_evals < 10:
        raise InputError("The SHAP budget must be at least 10 model evaluations.")
    return max_evals


# ---- classifiers ---------------------------------------------------------------------------------------------------
def class_log_odds(loaded: LoadedModel, texts: list[str]) -> np.ndarray:
    """log(p / (1 - p)) per class: additive, and not squashed near 0 or 1 like probabilities."""
    probs = np.clip(predict_proba(loaded.model, loaded.tokenizer, texts, batch_size=BATCH_SIZE).probs.astype(np.float64),
                    _EPS, 1 - _EPS)
    return np.log(probs) - np.log1p(-probs)


def explain_classifier(loaded: LoadedModel, text: str, max_evals: int = DEFAULT_MAX_EVALS,
                       max_tokens: int = DEFAULT_MAX_TOKENS, stop: StopFlag | None = None,
                       progress: Progress | None = None) -> Attribution:
    """Per-class token attributions of a sequence classifier (masked tokens become the tokenizer's mask token)."""
    if loaded.task != TEXT_CLASSIFICATION:
        raise InputError(f"'{loaded.model_id}' is not a text classifier.")
    max_evals = _check_budget(max_evals)
    fitted = fit_text(loaded.tokenizer, text, max_tokens)
    start = time.perf_counter()
    scorer = _BatchedScorer(lambda batch: class_log_odds(loaded, batch), max_evals, stop, progress)
    labels = class_labels(loaded.model)
    tokens, values, base = _run_partition(scorer, load_shap().maskers.Text(loaded.tokenizer), fitted.text, labels, max_evals)
    predicted = int(np.argmax(base + values.sum(axis=0)))
    return Attribution(tokens, values, base, labels, "log-odds of each class", "SHAP Partition explainer (text masker)",
                       scorer.evals, scorer.batches, time.perf_counter() - start, fitted, predicted)


# ---- causal language models ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Continuation:
    ids: list[int]
    names: list[str]  # one readable name per token
    notice: str | None  # set when the continuation was cut


def _greedy_next_token(loaded: LoadedModel, prompt: str) -> list[int]:
    ids = loaded.tokenizer(prompt, return_tensors="pt")["input_ids"].to(next(loaded.model.parameters()).device)
    with torch.no_grad():
        return [int(loaded.model(input_ids=ids).logits[0, -1].argmax())]


def choose_continuation(loaded: LoadedModel, prompt: str, continuation: str) -> Continuation:
    """The tokens to explain: the given continuation (a space is put between words), else the model's next token."""
    tokenizer = loaded.tokenizer
    notice = None
    if continuation.strip():
        continuation = continuation_text(prompt, continuation)  # "is" + "Paris" reads "is Paris", as the model writes
        ids = tokenizer(continuation.rstrip(), add_special_tokens=False)["input_ids"]
        if len(ids) > MAX_TARGET_TOKENS:
            notice = f"The continuation has {len(ids)} tokens; only the first {MAX_TARGET_TOKENS} are explained."
            ids = ids[:MAX_TARGET_TOKENS]
    else:
        ids = _greedy_next_token(loaded, prompt)
    names = [f"#{i + 1} {tokenizer.decode([t])!r}" for i, t in enumerate(ids)]
    return Continuation(ids, names, notice)


def _prompt_logits(loaded: LoadedModel, prompts: list[str], target: list[int]) -> tuple[torch.Tensor, list[list[int]]]:
    """Logits of one forward pass over each prompt followed by `target`, and each prompt's token ids."""
    tokenizer, model = loaded.tokenizer, loaded.model
    fallback = next(t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, 0) if t is not None)
    prompt_ids = [tokenizer(p)["input_ids"] or [fallback] for p in prompts]  # a fully masked prompt may be empty
    rows = [ids + target for ids in prompt_ids]
    width = max(map(len, rows))
    # Right padding keeps every real token at its usual position; the padding comes after what is read.
    input_ids = torch.tensor([r + [fallback] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    device = next(model.parameters()).device
    with torch.no_grad():
        return model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float(), prompt_ids


def continuation_log_probs(loaded: LoadedModel, prompts: list[str], target: list[int]) -> np.ndarray:
    """log p(target token k | prompt, earlier target tokens) for each prompt (teacher forcing), plus their sum first."""
    logits, prompt_ids = _prompt_logits(loaded, prompts, target)
    device = logits.device
    out = np.empty((len(prompts), len(target)))
    for i, ids in enumerate(prompt_ids):
        positions = torch.arange(len(ids) - 1, len(ids) - 1 + len(target), device=device)
        steps = torch.arange(len(target), device=device)
        out[i] = torch.log_softmax(logits[i, positions], -1)[steps, torch.tensor(target, device=device)].cpu().numpy()
    return np.concatenate([out.sum(axis=1, keepdims=True), out], axis=1)


def next_token_log_probs(loaded: LoadedModel, prompts: list[str], candidates: list[int]) -> np.ndarray:
    """(prompts, candidates): log p(candidate | prompt) of each candidate next token."""
    logits, prompt_ids = _prompt_logits(loaded, prompts, [])
    last = torch.tensor([len(ids) - 1 for ids in prompt_ids], device=logits.device)
    next_logits = logits[torch.arange(len(prompts), device=logits.device), last]
    return torch.log_softmax(next_logits, -1)[:, candidates].cpu().numpy()


def shap_on_prompt(loaded: LoadedModel, prompt: str, score: Callable[[list[str]], np.ndarray], names: list[str],
                   max_evals: int, stop: StopFlag | None, progress: Progress | None):
    """SHAP values of `score` (masked prompts -> one column per name) for a language model's prompt: masked tokens
    become "..." (runs collapsed into one). Returns the tokens, values, base values and the scorer (its counts)."""
    max_evals = _check_budget(max_evals)
    scorer = _BatchedScorer(score, max_evals, stop, progress)
    masker = load_shap().maskers.Text(loaded.tokenizer, mask_token="...", collapse_mask_token=True)
    return (*_run_partition(scorer, masker, prompt, names, max_evals), scorer)


def explain_continuation(loaded: LoadedModel, prompt: str, continuation: str = "", max_evals: int = DEFAULT_MAX_EVALS,
                         max_tokens: int = DEFAULT_MAX_TOKENS, stop: StopFlag | None = None,
                         progress: Progress | None = None) -> tuple[Attribution, str | None]:
    """Attribute the log-probability of a continuation (or the model's next token) to the prompt's tokens.

    This is what shap.models.TeacherForcing computes, scored here directly so the calls are batched,
    counted and stoppable.
    """
    if loaded.task != CAUSAL_LM:
        raise InputError(f"'{loaded.model_id}' is not a causal language model.")
    _check_budget(max_evals)
    fitted = fit_text(loaded.tokenizer, prompt, max_tokens)
    start = time.perf_counter()
    target = choose_continuation(loaded, fitted.text, continuation or "")
    names = ["whole continuation"] + target.names
    tokens, values, base, scorer = shap_on_prompt(loaded, fitted.text,
                                                  lambda batch: continuation_log_probs(loaded, batch, target.ids),
                                                  names, max_evals, stop, progress)
    if len(target.ids) == 1:  # the "whole" column would repeat the only token's column
        values, base, names = values[:, 1:], base[1:], names[1:]
    attribution = Attribution(tokens, values, base, names, "log-probability of the continuation (teacher forcing)",
                              "SHAP Partition explainer on continuation log-probabilities", scorer.evals,
                              scorer.batches, time.perf_counter() - start, fitted, 0)
    return attribution, target.notice


# ---- presentation --------------------------------------------------------------------------------------------------
def _colour(value: float, scale: float) -> str:
    """Red for tokens that raise the output, blue for tokens that lower it, stronger with size."""
    alpha = min(1.0, abs(value) / scale) * 0.85 if scale > 0 else 0.0
    rgb = "220, 38, 38" if value > 0 else "37, 99, 235"
    return f"rgba({rgb}, {alpha:.2f})"


def coloured_tokens(tokens: Sequence[str], column: np.ndarray) -> str:
    """Each token shaded by its value (hover: the exact value); tokens are escaped, so any text is safe to show."""
    scale = float(np.abs(column).max()) if len(column) else 0.0
    return "".join(
        f'<span class="shap-token" style="background:{_colour(v, scale)};padding:2px 1px;border-radius:3px" '
        f'title="{html.escape(t.strip() or t, quote=True)}: {v:+.4f}">{html.escape(t)}</span>'
        for t, v in zip(tokens, column))


def attribution_html(attribution: Attribution, output: int) -> str:
    """The text with each token shaded by its contribution."""
    column = attribution.values[:, output]
    spans = coloured_tokens(attribution.tokens, column)
    legend = ('<div style="font-size:0.85em;margin-top:6px;opacity:0.8">'
              '<span style="background:rgba(220,38,38,0.6);padding:0 4px">red</span> raises, '
              '<span style="background:rgba(37,99,235,0.6);padding:0 4px">blue</span> lowers '
              f'<b>{html.escape(attribution.output_names[output])}</b> ({html.escape(attribution.unit)}); '
              f'hover a word for its value. Full text: {attribution.base_values[output] + column.sum():+.3f}; '
              f'every token masked: {attribution.base_values[output]:+.3f}.</div>')
    return f'<div class="shap-text" style="font-size:1.2em;line-height:2.2;white-space:pre-wrap">{spans}</div>{legend}'


def attribution_bar_figure(attribution: Attribution, output: int, k: int = 12) -> go.Figure:
    """Horizontal bars of the k strongest tokens for one output."""
    top = attribution.strongest(output, k)[::-1]  # plotly draws the first bar at the bottom
    labels = [f"{t.strip() or repr(t)} (#{i})" for i, t, _v in top]  # the position keeps repeated words apart
    values = [v for _i, _t, v in top]
    fig = go.Figure(go.Bar(x=values, y=labels, orientation="h", marker_color=["#dc2626" if v > 0 else "#2563eb" for v in values],
                           hovertemplate="%{y}: %{x:+.4f}<extra></extra>"))
    fig.update_layout(title=f"Strongest tokens for {attribution.output_names[output]}", height=max(300, 28 * len(top) + 120),
                      xaxis_title=attribution.unit, margin={"l": 10, "r": 10, "t": 50, "b": 40})
    return fig
