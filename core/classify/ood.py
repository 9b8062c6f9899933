"""Is this text like what the classifier was trained on? Three out-of-distribution scores, and a flag.

- Maximum softmax probability (Hendrycks & Gimpel 2017): a flat distribution over the labels suggests an odd input.
- Energy (Liu et al. 2020): -logsumexp of the logits; unlike the softmax it keeps how large the logits are.
- Mahalanobis distance (Lee et al. 2018) to the nearest class mean under one shared covariance, both estimated
  from the classifier's own training texts, on two kinds of features: what the classification head reads, and the
  mean of the last layer's token states (what sentence encoders such as MiniLM were trained to make meaningful).

Every score is oriented so that higher means more out of distribution. For classifiers built or fine-tuned here,
`OodStats` (saved beside the weights) holds the class means and covariance, a threshold per method calibrated so
that 95 % of held-out in-distribution texts pass, and which method separated held-out texts from other prose
best: that method flags by default. Without statistics, only the softmax method (with a user threshold) exists.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.common.errors import InputError

DEFAULT_THRESHOLD = 0.70
TPR = 0.95  # share of held-out in-distribution texts a calibrated threshold lets pass
MSP, ENERGY = "max softmax probability", "energy"
MAHALANOBIS, MAHALANOBIS_MEAN = "Mahalanobis distance (head features)", "Mahalanobis distance (mean token state)"
FEATURES = {MAHALANOBIS: "head", MAHALANOBIS_MEAN: "mean"}  # method -> the features it measures
METHODS = (MSP, ENERGY, MAHALANOBIS, MAHALANOBIS_MEAN)
AUTO = "auto"
STATS_FILE, STATS_META = "ood_stats.safetensors", "ood_stats.json"

EXPLANATION = ("A prediction is flagged as possibly out of distribution when the text looks unlike the classifier's "
               "training data. Auto uses the method that separated held-out training texts from other prose best (for "
               "classifiers built or fine-tuned here); the threshold slider sets the max-softmax method's cut-off.")


def normalised_entropy(probs: np.ndarray) -> float:
    probs = np.asarray(probs, dtype=float)
    if probs.size < 2:
        return 0.0
    p = probs[probs > 0]
    return float(-(p * np.log(p)).sum() / np.log(probs.size))


@dataclass(frozen=True)
class Confidence:
    max_prob: float
    entropy: float  # normalised: 0 = all mass on one class, 1 = uniform
    threshold: float  # for MSP: the probability below which a text is flagged; else the score above which it is
    method: str = MSP
    score: float | None = None  # the method's out-of-distribution score (None for MSP: max_prob says it)
    calibrated: bool = False  # the threshold comes from held-out texts (95 % of them pass)

    @property
    def low(self) -> bool:
        return self.max_prob < self.threshold if self.method == MSP else self.score > self.threshold

    def describe(self) -> str:
        verdict = "⚠️ low confidence: possibly out of distribution" if self.low else "✅ looks in distribution"
        if self.method == MSP:
            detail = f"top probability {self.max_prob:.2f} vs threshold {self.threshold:.2f}"
        else:
            how = f", calibrated so {TPR:.0%} of held-out training texts pass" if self.calibrated else ""
            detail = f"{self.method} {self.score:.2f} vs threshold {self.threshold:.2f}{how}"
        return f"{verdict} ({detail}; normalised entropy {self.entropy:.2f})"


def confidence(probs: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> Confidence:
    """The max-softmax flag for one row of class probabilities."""
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold must be between 0 and 1, got {threshold}")
    probs = np.asarray(probs, dtype=float)
    return Confidence(float(probs.max()), normalised_entropy(probs), float(threshold))


# ---- scores from a model -------------------------------------------------------------------------------------------
def _head(model) -> torch.nn.Linear:
    """The last linear layer with one output per class: its input is what the classifier decides from."""
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == model.config.num_labels]
    if not heads:
        raise InputError("This classifier has no linear head to read features from; Mahalanobis is not available.")
    return heads[-1]


@torch.no_grad()
def features_and_logits(model, tokenizer, texts: list[str], batch_size: int = 32,
                        max_length: int = 128) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({"head": head input features, "mean": mean last-layer token state}, logits) for each text."""
    captured: list[torch.Tensor] = []
    handle = _head(model).register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0].detach().float()))
    device = next(model.parameters()).device
    head, mean, logits = [], [], []
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt").to(device)
            out = model(**batch, output_hidden_states=True)
            logits.append(out.logits.float().cpu())
            mask = batch["attention_mask"]
            head.append(_pooled(captured.pop(), mask).cpu())
            weights = mask[..., None].float()
            mean.append(((out.hidden_states[-1].float() * weights).sum(1) / weights.sum(1).clamp_min(1)).cpu())
    finally:
        handle.remove()
    return {"head": torch.cat(head).numpy(), "mean": torch.cat(mean).numpy()}, torch.cat(logits).numpy()


def _pooled(head_input: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One feature row per text: decoder classifiers (GPT-2, LLaMA) run the head on every position and read the
    last real token; encoders hand it one pooled row already."""
    if head_input.dim() == 2:
        return head_input
    last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # the last real token, with padding on either side
    return head_input[torch.arange(head_input.shape[0]), last]


@dataclass
class OodStats:
    means: dict[str, np.ndarray]  # feature kind -> (classes, features)
    precision: dict[str, np.ndarray]  # feature kind -> inverse of the shared within-class covariance
    thresholds: dict[str, float] = field(default_factory=dict)  # method -> score threshold at 95 % TPR
    auroc: dict[str, float] = field(default_factory=dict)  # method -> held-out vs other prose (how default is chosen)
    default: str = MSP

    def save(self, folder: Path) -> None:
        from safetensors.numpy import save_file

        save_file({f"{what}.{kind}": array.astype(np.float32) for what, arrays in (("means", self.means),
                                                                                   ("precision", self.precision))
                   for kind, array in arrays.items()}, str(Path(folder) / STATS_FILE))
        (Path(folder) / STATS_META).write_text(json.dumps({"thresholds": self.thresholds, "auroc": self.auroc,
                                                           "default": self.default}, indent=1))

    @classmethod
    def load(cls, folder: str | Path) -> OodStats | None:
        folder = Path(folder)
        if not (folder / STATS_FILE).exists() or not (folder / STATS_META).exists():
            return None
        from safetensors.numpy import load_file

        tensors, meta = load_file(str(folder / STATS_FILE)), json.loads((folder / STATS_META).read_text())
        if set(meta["thresholds"]) != set(METHODS):
            return None  # statistics of an older version of this code: the softmax flag still works
        split = lambda what: {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(what + ".")}  # noqa
        return cls(split("means"), split("precision"), meta["thresholds"], meta["auroc"], meta["default"])


def _mahalanobis(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    centred = features[:, None, :] - means[None, :, :]  # (texts, classes, features)
    return np.einsum("ncf,fg,ncg->nc", centred, precision, centred).min(axis=1)


def scores(features: dict[str, np.ndarray], logits: np.ndarray, stats: OodStats | None) -> dict[str, np.ndarray]:
    """Each method's out-of-distribution score per text (higher = more unusual)."""
    probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    result = {MSP: 1.0 - probs.max(axis=1), ENERGY: -torch.logsumexp(torch.from_numpy(logits), dim=-1).numpy()}
    if stats is not None:
        for method, kind in FEATURES.items():
            result[method] = _mahalanobis(features[kind], stats.means[kind], stats.precision[kind])
    return result


def _class_statistics(features: np.ndarray, labels: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    means = np.stack([features[labels == c].mean(0) for c in range(classes)])
    centred = features - means[labels]
    covariance = centred.T @ centred / max(1, len(features) - 1)
    ridge = np.eye(covariance.shape[0]) * 1e-6 * np.trace(covariance) / len(covariance)
    return means, np.linalg.pinv(covariance + ridge)


def fit_stats(model, tokenizer, train_texts: list[str], train_labels: list[int], held_out: list[str],
              other_prose: list[str]) -> OodStats:
    """Class means and shared covariance from the training texts; thresholds at 95 % TPR on held-out texts; the
    default method is the one with the best AUROC between held-out texts and other prose (never test data)."""
    from sklearn.metrics import roc_auc_score

    features, _ = features_and_logits(model, tokenizer, train_texts)
    labels = np.asarray(train_labels)
    fitted = {kind: _class_statistics(features[kind], labels, model.config.num_labels) for kind in FEATURES.values()}
    stats = OodStats({k: f[0] for k, f in fitted.items()}, {k: f[1] for k, f in fitted.items()})
    inside = scores(*features_and_logits(model, tokenizer, held_out), stats)
    outside = scores(*features_and_logits(model, tokenizer, other_prose), stats)
    stats.thresholds = {m: float(np.quantile(inside[m], TPR)) for m in METHODS}
    stats.auroc = {m: float(roc_auc_score([0] * len(inside[m]) + [1] * len(outside[m]),
                                          np.concatenate([inside[m], outside[m]]))) for m in METHODS}
    stats.default = max(stats.auroc, key=stats.auroc.get)
    return stats


def flag(features: np.ndarray, logits: np.ndarray, stats: OodStats | None, method: str = AUTO,
         threshold: float = DEFAULT_THRESHOLD) -> list[Confidence]:
    """The flag for each text by `method` (auto: the stats' default, or max softmax without statistics)."""
    chosen = (stats.default if stats else MSP) if method == AUTO else method
    if chosen != MSP and stats is None:
        raise InputError(f"{chosen} needs statistics of the classifier's training data; only classifiers built or "
                         "fine-tuned here have them. Use max softmax probability.")
    probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    all_scores = scores(features, logits, stats)
    return [Confidence(float(p.max()), normalised_entropy(p),
                       threshold if chosen == MSP else stats.thresholds[chosen], chosen,
                       None if chosen == MSP else float(all_scores[chosen][i]), chosen != MSP)
            for i, p in enumerate(probs)]


def prose_sentences(text: str, limit: int = 200) -> list[str]:
    """Sentences of a text, for the 'other prose' side of choosing a method."""
    import re

    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 4][:limit]
