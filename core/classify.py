"""Sequence classification with any loaded transformers classifier: class probabilities for texts."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


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
