"""Sequence classification with any loaded transformers classifier: class probabilities for texts."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.classify.ood import AUTO, DEFAULT_THRESHOLD, MSP, Confidence, OodStats, confidence, features_and_logits, flag
from core.common.errors import InputError


@dataclass(frozen=True)
class ClassProbabilities:
    labels: list[str]  # class names in column order
    probs: np.ndarray  # shape (n_texts, n_classes), rows sum to 1

    def top(self, row: int = 0) -> tuple[str, float]:
        i = int(self.probs[row].argmax())
        return self.labels[i], float(self.probs[row, i])


def class_labels(model) -> list[str]:
    id2label = model.config.id2label
    return [str(id2label[i]) for i in range(len(id2label))]


@torch.no_grad()
def predict_proba(model, tokenizer, texts: list[str], batch_size: int = 32, max_length: int | None = None) -> ClassProbabilities:
    """Softmax probabilities, batched; texts longer than the model allows are truncated."""
    limit = max_length or min(getattr(tokenizer, "model_max_length", 512), 512)
    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=limit,
                          return_tensors="pt").to(device)
        rows.append(torch.softmax(model(**batch).logits.float(), dim=-1).cpu().numpy())
    probs = np.concatenate(rows) if rows else np.zeros((0, len(class_labels(model))))
    return ClassProbabilities(class_labels(model), probs)


class TextInputError(InputError):
    """The text to label cannot be used as given; the message says why."""


def check_text(text: str | None) -> str:
    text = (text or "").strip()
    if not text:
        raise TextInputError("The text is empty: type or paste something to analyse.")
    return text


def model_max_length(tokenizer, model=None) -> int:
    """Tokens the model can read: the tokenizer's limit, capped by the position table (tokenizers often say 1e30)."""
    limit = min(getattr(tokenizer, "model_max_length", 512) or 512, 512)
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return min(limit, positions) if positions else limit


def fit_to_model(tokenizer, text: str, max_length: int) -> tuple[str, str | None]:
    """The part of `text` the model can read, and a notice saying what was cut (None when nothing was)."""
    n_tokens = len(tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])
    if n_tokens <= max_length:
        return text, None
    if tokenizer.is_fast:
        kept = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True)
        cut = max(end for _start, end in kept["offset_mapping"])
        seen = f"the first {cut:,} of {len(text):,} characters"
    else:  # slow tokenizers have no character offsets: keep a share of the characters instead
        cut = len(text) * max_length // n_tokens
        seen = f"about the first {cut:,} of {len(text):,} characters"
    return text[:cut], (f"The text is {n_tokens:,} tokens long but this model reads at most {max_length}: "
                        f"only {seen} were used.")


class SequenceClassifier:
    """A transformers sequence classifier behind the same `predict(texts)` as the zero-shot classifiers; with the
    out-of-distribution statistics saved beside its weights it can also flag texts unlike its training data."""

    def __init__(self, model, tokenizer, ood: OodStats | None = None):
        self.model, self.tokenizer, self.ood = model, tokenizer, ood
        self.max_length = model_max_length(tokenizer, model)

    @property
    def labels(self) -> list[str]:
        return class_labels(self.model)

    def predict(self, texts: list[str]) -> ClassProbabilities:
        return predict_proba(self.model, self.tokenizer, texts, max_length=self.max_length)

    def assess(self, texts: list[str], method: str = AUTO,
               threshold: float = DEFAULT_THRESHOLD) -> tuple[ClassProbabilities, list[Confidence]]:
        features, logits = features_and_logits(self.model, self.tokenizer, texts, max_length=self.max_length)
        probs = ClassProbabilities(self.labels, torch.softmax(torch.from_numpy(logits), dim=-1).numpy())
        return probs, flag(features, logits, self.ood, method, threshold)


def assess(classifier, texts: list[str], method: str = AUTO,
           threshold: float = DEFAULT_THRESHOLD) -> tuple[ClassProbabilities, list[Confidence]]:
    """Probabilities and an out-of-distribution flag per text; classifiers without features get max softmax."""
    if hasattr(classifier, "assess"):
        return classifier.assess(texts, method, threshold)
    if method not in (AUTO, MSP):
        raise InputError(f"{method} needs a trained classifier's features; zero-shot labels use max softmax probability.")
    probs = classifier.predict(texts)
    return probs, [confidence(row, threshold) for row in probs.probs]


@dataclass(frozen=True)
class ClassificationResult:
    text: str
    probs: ClassProbabilities  # one row
    confidence: Confidence
    notice: str | None  # e.g. the text was truncated

    @property
    def label(self) -> str:
        return self.probs.top(0)[0]

    def ranked(self) -> list[tuple[str, float]]:
        """(label, probability) pairs, most likely first."""
        row = self.probs.probs[0]
        return sorted(zip(self.probs.labels, map(float, row)), key=lambda pair: -pair[1])


def classify_text(classifier, text: str, threshold: float = DEFAULT_THRESHOLD, method: str = AUTO) -> ClassificationResult:
    """Label one text with any object that has `predict(texts)`, `tokenizer` and `max_length`."""
    text = check_text(text)
    kept, notice = fit_to_model(classifier.tokenizer, text, classifier.max_length)
    probs, flags = assess(classifier, [kept], method, threshold)
    return ClassificationResult(text, probs, flags[0], notice)


def probability_figure(result: ClassificationResult):
    """Horizontal bars of every class probability, most likely on top, with the confidence threshold marked."""
    import plotly.graph_objects as go

    ranked = result.ranked()[::-1]  # plotly draws the first bar at the bottom
    colours = ["#4f46e5" if label == result.label else "#a5b4fc" for label, _ in ranked]
    figure = go.Figure(go.Bar(x=[p for _, p in ranked], y=[label for label, _ in ranked], orientation="h",
                              marker_color=colours, text=[f"{p:.1%}" for _, p in ranked], textposition="auto"))
    if result.confidence.method == MSP:
        figure.add_vline(x=result.confidence.threshold, line_dash="dash", line_color="#dc2626",
                         annotation_text=f"threshold {result.confidence.threshold:.2f}", annotation_position="top")
    figure.update_layout(xaxis=dict(range=[0, 1], title="probability"), height=120 + 32 * len(ranked),
                         margin=dict(l=10, r=10, t=30, b=40), showlegend=False)
    return figure
