"""Zero-shot classification with labels the user types.

Two methods, picked from the model itself:
- NLI (e.g. facebook/bart-large-mnli): each label becomes a hypothesis ("This example is about {label}.")
  and the model's entailment score ranks the labels, as in Yin et al. 2019 and the transformers pipeline.
- Embedding similarity (any sentence encoder, e.g. the offline all-MiniLM-L6-v2): cosine between the
  mean-pooled text embedding and each hypothesis embedding, turned into probabilities with a softmax.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from core.classify.classifier import ClassProbabilities, model_max_length
from core.common.errors import InputError
from core.models.registry import ENCODER, ZERO_SHOT

DEFAULT_TEMPLATE = "This text is about {}."
MAX_LABELS = 20
# Cosines of one encoder sit in a narrow band (e.g. 0.1-0.4); dividing by this spreads them into usable odds.
EMBEDDING_TEMPERATURE = 0.05


class ZeroShotError(InputError):
    """The labels or template cannot be used; the message says how to fix them."""


def parse_labels(text: str | None) -> list[str]:
    """Comma- or newline-separated labels, stripped and de-duplicated (case-insensitively), order kept."""
    labels, seen = [], set()
    for raw in re.split(r"[,\n]", text or ""):
        label = raw.strip()
        if label and label.lower() not in seen:
            seen.add(label.lower())
            labels.append(label)
    if len(labels) < 2:
        raise ZeroShotError("Type at least two candidate labels, separated by commas (e.g. 'sports, politics, science').")
    if len(labels) > MAX_LABELS:
        raise ZeroShotError(f"{len(labels)} labels given; the limit is {MAX_LABELS}.")
    return labels


def hypotheses(labels: list[str], template: str = DEFAULT_TEMPLATE) -> list[str]:
    template = (template or DEFAULT_TEMPLATE).strip()
    if template.count("{}") != 1:
        raise ZeroShotError("The hypothesis template needs exactly one '{}' where the label goes, "
                            "e.g. 'This text is about {}.'")
    return [template.format(label) for label in labels]


def entailment_id(config) -> int | None:
    """Class index of 'entailment' in an NLI model (which also has 'contradiction'), or None if not NLI."""
    names = {str(name).lower(): int(i) for i, name in config.id2label.items()}
    entail = next((i for name, i in names.items() if name.startswith("entail")), None)
    has_contradiction = any(name.startswith("contra") for name in names)
    return entail if has_contradiction else None


@dataclass
class NliZeroShot:
    model: object
    tokenizer: object
    labels: list[str]
    template: str = DEFAULT_TEMPLATE
    method: str = "NLI entailment"

    def __post_init__(self):
        self.entail = entailment_id(self.model.config)
        if self.entail is None:
            raise ZeroShotError("This model has no entailment/contradiction labels, so it is not an NLI model.")
        self.max_length = model_max_length(self.tokenizer, self.model)
        self.hypotheses = hypotheses(self.labels, self.template)

    @torch.no_grad()
    def predict(self, texts: list[str]) -> ClassProbabilities:
        rows = []
        device = next(self.model.parameters()).device
        for text in texts:
            batch = self.tokenizer([text] * len(self.hypotheses), self.hypotheses, padding=True,
                                   truncation="only_first", max_length=self.max_length, return_tensors="pt").to(device)
            logits = self.model(**batch).logits.float()
            # Labels compete for one text: softmax of the entailment logits across the hypotheses.
            rows.append(torch.softmax(logits[:, self.entail], dim=0).cpu().numpy())
        return ClassProbabilities(list(self.labels), np.stack(rows) if rows else np.zeros((0, len(self.labels))))


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


@dataclass
class EmbeddingZeroShot:
    encoder: object  # an AutoModel returning last_hidden_state
    tokenizer: object
    labels: list[str]
    template: str = DEFAULT_TEMPLATE
    temperature: float = EMBEDDING_TEMPERATURE
    method: str = "embedding similarity"

    def __post_init__(self):
        self.max_length = model_max_length(self.tokenizer, self.encoder)
        self.label_vectors = self.embed(hypotheses(self.labels, self.template))

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        device = next(self.encoder.parameters()).device
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(device)
        hidden = self.encoder(**batch).last_hidden_state.float()
        return torch.nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1)

    def predict(self, texts: list[str]) -> ClassProbabilities:
        if not texts:
            return ClassProbabilities(list(self.labels), np.zeros((0, len(self.labels))))
        cosine = self.embed(texts) @ self.label_vectors.T
        return ClassProbabilities(list(self.labels), torch.softmax(cosine / self.temperature, dim=-1).cpu().numpy())


def is_nli_model(manager, model_id: str) -> bool:
    """Read only the config to choose the method before loading any weights."""
    from transformers import AutoConfig

    from core.models.manager import ModelLoadError

    resolved = manager.resolve(model_id)
    try:
        config = AutoConfig.from_pretrained(resolved.path)
    except Exception as err:  # hub, file and config errors all become one readable message
        first_line = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        raise ModelLoadError(f"Could not read the configuration of '{model_id}' ({resolved.source}): {first_line}") from err
    return entailment_id(config) is not None


def zero_shot_classifier(manager, model_id: str, labels: list[str], template: str = DEFAULT_TEMPLATE, progress=None):
    """An NLI classifier when the model has entailment labels, else embedding similarity on its encoder."""
    if is_nli_model(manager, model_id):
        loaded = manager.load(model_id, task=ZERO_SHOT, progress=progress)
        return NliZeroShot(loaded.model, loaded.tokenizer, labels, template)
    loaded = manager.load(model_id, task=ENCODER, progress=progress)
    return EmbeddingZeroShot(loaded.model, loaded.tokenizer, labels, template)
