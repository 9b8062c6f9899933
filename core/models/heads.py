"""Classification heads on a pre-trained encoder: the standard one, mean pooling + MLP, and attention pooling.

The standard head is transformers' own (a linear layer on the first token, through BERT's pooler). The other two
read every token: mean pooling averages the last layer's token states (what sentence encoders such as MiniLM were
trained for) and feeds a small MLP; attention pooling learns a score per token and averages by it. Models with
these heads are saved as the encoder plus `playground_head.json` / `playground_head.safetensors`, and loaded by
this module (no remote code): every tab uses them like any sequence classifier.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

STANDARD, MEAN_MLP, ATTENTION = "first token (standard)", "mean pooling + MLP", "attention pooling"
HEADS = (STANDARD, MEAN_MLP, ATTENTION)
HEAD_CONFIG, HEAD_WEIGHTS = "playground_head.json", "playground_head.safetensors"


class PooledClassifier(nn.Module):
    """Encoder + pooling + head, behaving like a transformers sequence classifier (`.config`, `.logits`)."""

    def __init__(self, encoder: nn.Module, pooling: str, id2label: dict[int, str]):
        super().__init__()
        if pooling not in (MEAN_MLP, ATTENTION):
            raise ValueError(f"unknown pooling {pooling!r}")
        self.encoder, self.pooling = encoder, pooling
        self.config = encoder.config
        self.config.id2label, self.config.label2id = dict(id2label), {v: k for k, v in id2label.items()}
        self.config.num_labels = len(id2label)
        hidden = self.config.hidden_size
        self.score = nn.Linear(hidden, 1) if pooling == ATTENTION else None
        layers = [nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(0.1)] if pooling == MEAN_MLP else [nn.Dropout(0.1)]
        self.head = nn.Sequential(*layers, nn.Linear(hidden, len(id2label)))

    @property
    def name_or_path(self) -> str:
        return getattr(self.encoder, "name_or_path", "")

    def _pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask[..., None].to(states.dtype)
        if self.pooling == MEAN_MLP:
            return (states * mask).sum(1) / mask.sum(1).clamp_min(1)
        weights = self.score(states).masked_fill(mask == 0, torch.finfo(states.dtype).min).softmax(dim=1)
        return (weights * states).sum(1)

    def forward(self, input_ids=None, attention_mask=None, labels=None, output_attentions=None,
                output_hidden_states=None, **kwargs) -> SequenceClassifierOutput:
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        out = self.encoder(input_ids=input_ids, attention_mask=mask, output_attentions=output_attentions,
                           output_hidden_states=output_hidden_states, **kwargs)
        logits = self.head(self._pool(out.last_hidden_state, mask))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss, logits, out.hidden_states, out.attentions)

    def save_pretrained(self, folder: str | Path, **kwargs) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        self.encoder.save_pretrained(folder, **kwargs)
        weights = {f"head.{k}": v.contiguous() for k, v in self.head.state_dict().items()}
        if self.score is not None:
            weights |= {f"score.{k}": v.contiguous() for k, v in self.score.state_dict().items()}
        save_file(weights, str(folder / HEAD_WEIGHTS))
        (folder / HEAD_CONFIG).write_text(json.dumps({"pooling": self.pooling, "id2label": self.config.id2label}))

    @classmethod
    def from_folder(cls, folder: str | Path, **kwargs) -> PooledClassifier:
        from safetensors.torch import load_file
        from transformers import AutoModel

        folder = Path(folder)
        config = json.loads((folder / HEAD_CONFIG).read_text())
        model = cls(AutoModel.from_pretrained(folder, **kwargs), config["pooling"],
                    {int(k): v for k, v in config["id2label"].items()})
        weights = load_file(str(folder / HEAD_WEIGHTS))
        model.head.load_state_dict({k[5:]: v for k, v in weights.items() if k.startswith("head.")})
        if model.score is not None:
            model.score.load_state_dict({k[6:]: v for k, v in weights.items() if k.startswith("score.")})
        return model.eval()


def has_custom_head(folder: str | Path) -> bool:
    return (Path(folder) / HEAD_CONFIG).exists()


# Top-level modules that make up a classification head, in ours and in transformers' classifiers.
HEAD_MODULES = {"head", "score", "classifier", "pre_classifier"}


def freeze_encoder(model: nn.Module) -> None:
    """Train the classification head only: every parameter outside it stops getting gradients."""
    for name, param in model.named_parameters():
        param.requires_grad = name.split(".")[0] in HEAD_MODULES
