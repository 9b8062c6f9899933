"""Teacher-student distillation and per-example weights, as one Trainer.

A student is a copy of the teacher with fewer transformer layers, evenly spaced and initialised from the
teacher's own (as DistilBERT did from BERT). It learns from both the labels (cross-entropy) and the teacher's
temperature-softened outputs (KL divergence, scaled by T^2 as in Hinton et al. 2015):
    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)
For causal LMs both terms are averaged over the positions that carry a label. Per-example weights (reweighing)
scale the cross-entropy term.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer

from core.common.errors import InputError
from core.finetune.tasks import IGNORE


def layer_list(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """(parent, attribute, the ModuleList of transformer layers): the list as long as config.num_hidden_layers."""
    count = model.config.num_hidden_layers
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ModuleList) and len(child) == count:
                return parent, name, child
    raise InputError(f"Could not find the {count} transformer layers of this {model.config.model_type} model.")


def kept_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced layers to keep, first and last included."""
    if teacher_layers < 2:
        raise InputError("This teacher has a single layer: there is no smaller student to distil it into.")
    if not 1 <= student_layers < teacher_layers:
        raise InputError(f"The student must have fewer layers than its teacher's {teacher_layers} (and at least one); "
                         f"got {student_layers}.")
    return sorted({int(round(i)) for i in np.linspace(0, teacher_layers - 1, student_layers)})


def make_student(teacher: nn.Module, student_layers: int) -> nn.Module:
    """A copy of the teacher keeping `student_layers` of its layers, each initialised from the teacher's."""
    student = copy.deepcopy(teacher)
    parent, name, layers = layer_list(student)
    keep = kept_layers(len(layers), student_layers)
    setattr(parent, name, nn.ModuleList([layers[i] for i in keep]))
    student.config.num_hidden_layers = len(keep)
    if isinstance(getattr(student.config, "layer_types", None), list):
        student.config.layer_types = [student.config.layer_types[i] for i in keep]
    for new_index, layer in enumerate(getattr(parent, name)):
        for module in layer.modules():  # decoders index their KV cache by layer
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    return student


class PlaygroundTrainer(Trainer):
    """transformers' Trainer with an optional teacher to distil from and optional per-example weights."""

    def __init__(self, *args, teacher: nn.Module | None = None, alpha: float = 0.5, temperature: float = 2.0,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher, self.alpha, self.temperature = teacher, alpha, temperature
        if teacher is not None:
            teacher.eval().to(self.args.device)
        self._terms: dict[str, list[float]] = {"kd_loss": [], "ce_loss": []}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        weights = inputs.pop("weight", None)
        if self.teacher is None and weights is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs.logits
        ce, positions = _cross_entropy(logits, labels)
        if weights is not None:
            ce = ce * weights.to(ce.dtype)
        ce = ce.mean()
        loss = ce
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(**inputs).logits
            kd = _distillation(logits, teacher_logits, positions, self.temperature)
            loss = self.alpha * kd + (1 - self.alpha) * ce
            if model.training:
                self._terms["kd_loss"].append(float(kd.detach()))
                self._terms["ce_loss"].append(float(ce.detach()))
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        """The training loss line also carries the two terms of the distillation loss (averaged since the last)."""
        if "loss" in logs and self._terms["kd_loss"]:
            logs = {**logs, **{k: float(np.mean(v)) for k, v in self._terms.items()}}
            self._terms = {k: [] for k in self._terms}
        super().log(logs, *args, **kwargs)


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-example cross-entropy, and (causal LMs) the mask of positions predicting a labelled next token."""
    if logits.dim() == 2:  # sequence classification
        return F.cross_entropy(logits.float(), labels, reduction="none"), None
    shifted, targets = logits[:, :-1].float(), labels[:, 1:]
    positions = targets != IGNORE
    per_token = F.cross_entropy(shifted.transpose(1, 2), targets.clamp_min(0), reduction="none") * positions
    return per_token.sum(1) / positions.sum(1).clamp_min(1), positions


def _distillation(student: torch.Tensor, teacher: torch.Tensor, positions: torch.Tensor | None,
                  temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher || student) on temperature-softened distributions, averaged over examples (or positions)."""
    if positions is not None:
        student, teacher = student[:, :-1][positions], teacher[:, :-1][positions]
    log_student = F.log_softmax(student.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher.float() / temperature, dim=-1)
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * temperature ** 2


def with_weights(collator):
    """A collator that carries a per-example `weight` past the tokenizer's padding."""
    def collate(features: list[dict]) -> dict:
        weights = [f.get("weight") for f in features]
        batch = collator([{k: v for k, v in f.items() if k != "weight"} for f in features])
        if all(w is not None for w in weights):
            batch["weight"] = torch.tensor(weights, dtype=torch.float32)
        return batch

    return collate
