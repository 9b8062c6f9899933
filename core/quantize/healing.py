"""Heal a compressed causal LM with LoRA: a short fine-tune of low-rank adapters on the linear layers that
pruning or truncation damaged, so the model recovers some of what it lost (as in Wanda's and SVD-LLM's papers).

The healing text is the team's reviews (assets/sentiment_reviews.csv, about 33,000 SmolLM2 tokens), never the
evaluation text. Not the calibration text either: at 1,400 tokens, adapters trained on it overfit, and the
evaluation text's perplexity rose (SmolLM2 SVD-LLM 93 -> 252, Wanda 58 -> 92).
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from core.common.errors import InputError, StoppedError
from core.common.stopping import StopFlag
from core.models.paths import assets_dir

HEALING_FILE = "sentiment_reviews.csv"


@dataclass(frozen=True)
class HealSettings:
    # One setting tried on SmolLM2, not tuned: 60 steps of 4 x 128 tokens, about one pass over the reviews and
    # 2.5 minutes on two cores.
    steps: int = 60
    batch: int = 4
    window: int = 128
    rank: int = 8
    learning_rate: float = 3e-4
    seed: int = 0


def healing_text() -> str:
    return "\n".join(pd.read_csv(assets_dir() / HEALING_FILE)["text"].astype(str))


def linear_names(model: nn.Module) -> list[str]:
    """Every linear layer but the output head: the layers that compression touched (factored ones included)."""
    head = model.get_output_embeddings()
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and module is not head]


def heal(model: nn.Module, ids: torch.Tensor, settings: HealSettings = HealSettings(),
         stop: StopFlag | None = None) -> tuple[nn.Module, list[float]]:
    """The model with trained LoRA adapters (kept apart, so zeroed weights stay zero) and the loss per step.

    `ids` is one long row of healing-text tokens; each step trains on `batch` random windows of it."""
    from peft import LoraConfig, get_peft_model

    if ids.shape[-1] <= settings.window:
        raise InputError(f"Healing needs more than {settings.window} tokens of text; got {ids.shape[-1]}.")
    config = LoraConfig(r=settings.rank, lora_alpha=2 * settings.rank, lora_dropout=0.0,
                        target_modules=linear_names(model))
    healed = get_peft_model(model, config)
    optimizer = torch.optim.AdamW([p for p in healed.parameters() if p.requires_grad], lr=settings.learning_rate)
    generator = torch.Generator().manual_seed(settings.seed)
    row, losses = ids.reshape(-1), []
    healed.train()
    for _ in range(settings.steps):
        if stop is not None and stop.stopped:
            raise StoppedError("Stopped while healing.")
        starts = torch.randint(0, row.numel() - settings.window, (settings.batch,), generator=generator)
        batch = torch.stack([row[s:s + settings.window] for s in starts.tolist()])
        loss = healed(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    healed.eval()
    return healed, losses


def adapter_params(model: nn.Module) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
