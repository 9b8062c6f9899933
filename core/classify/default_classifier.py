"""The offline default sentiment classifier: the shipped all-MiniLM-L6-v2 encoder fine-tuned on the team's reviews.

Built once, at the app's start or on first use (about a minute on two CPU cores) from `assets/sentiment_reviews.csv` and
saved as a standard transformers sequence-classification folder (safetensors + tokenizer, labels
negative/positive), so every tab loads it like any hub classifier. Training is seeded and runs
single-threaded-deterministic ops only, so two builds give the same weights on the same machine.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from core.classify.ood import fit_stats, prose_sentences
from core.models.packaged import minilm_folder
from core.models.paths import assets_dir, calibration_text

LABELS = ["negative", "positive"]
DATA_FILE = "sentiment_reviews.csv"


@dataclass(frozen=True)
class TrainSettings:
    # Batch and learning rate chosen by bench/tune_default_classifier.py on a held-out 20 % of the team's reviews
    # (never on SST-2): of 8 settings (2-3 epochs, batch 16/32, lr 5e-5/1e-4) 3 epochs scored best, 0.897. The
    # app builds this at start, so it was then made cheaper: 2 epochs with the word embeddings frozen build in 63 s
    # instead of 128 s (2 cores, one run), and SST-2 validation (the >= 0.80 guard) read 0.834 against 0.825.
    epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 1e-4
    max_length: int = 64  # the reviews are short; truncating at 64 tokens keeps a step cheap
    seed: int = 13
    held_out: float = 0.1  # reviews kept out of training to calibrate the out-of-distribution flag
    freeze_embeddings: bool = True  # the word-embedding table is half the weights: frozen, a step costs less


def read_reviews(path: Path | None = None) -> tuple[list[str], list[int]]:
    frame = pd.read_csv(path or assets_dir() / DATA_FILE)
    unknown = set(frame["label"]) - set(LABELS)
    if unknown:
        raise ValueError(f"{DATA_FILE} has labels {sorted(unknown)}; expected {LABELS}")
    return frame["text"].astype(str).tolist(), [LABELS.index(label) for label in frame["label"]]


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def length_batches(lengths: list[int], batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled batches of similar-length texts, so padding each batch to its longest text wastes little compute.

    Texts are shuffled, sorted by length within pools of 32 batches, cut into batches, and the batches shuffled
    again: every epoch sees a different mix while most of the speed-up of full sorting is kept.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    pool = batch_size * 32
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: lengths[i])
        batches += [torch.tensor(chunk[j:j + batch_size]) for j in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def build(out: Path, progress: Callable[[float, str], None] | None = None,
          settings: TrainSettings = TrainSettings(), data: Path | None = None) -> None:
    """Fine-tune the MiniLM encoder plus a new 2-class head on the team's reviews and save it to `out`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    report = progress or (lambda *_: None)
    generator = seed_everything(settings.seed)
    texts, labels, held_out = split_held_out(*read_reviews(data), settings.held_out, generator)
    encoder = minilm_folder(None)
    report(0.02, "Building the offline sentiment classifier (first use only): loading the MiniLM encoder")
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    model = AutoModelForSequenceClassification.from_pretrained(
        encoder, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id={l: i for i, l in enumerate(LABELS)})
    if settings.freeze_embeddings:
        model.base_model.embeddings.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate)
    targets = torch.tensor(labels)
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=settings.max_length)["input_ids"]]
    steps_per_epoch = -(-len(texts) // settings.batch_size)
    total = settings.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / total)
    model.train()
    step = 0
    for epoch in range(settings.epochs):
        for idx in length_batches(lengths, settings.batch_size, generator):
            batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=settings.max_length,
                              return_tensors="pt")
            loss = model(**batch, labels=targets[idx]).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step % 5 == 0 or step == total:
                report(0.05 + 0.9 * step / total,
                       f"Training the sentiment head: epoch {epoch + 1}/{settings.epochs}, loss {loss.item():.3f}")
    model.eval()
    report(0.95, "Measuring what in-distribution text looks like to the classifier (out-of-distribution flag)")
    prose = prose_sentences(calibration_text())
    stats = fit_stats(model, tokenizer, texts, labels, held_out, prose)
    report(0.97, "Saving the sentiment classifier to the local cache")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    stats.save(out)
    report(1.0, "Offline sentiment classifier ready")


def training_texts(settings: TrainSettings = TrainSettings()) -> set[str]:
    """The reviews the packaged classifier learned from (the same seeded split as its build)."""
    generator = torch.Generator().manual_seed(settings.seed)
    return set(split_held_out(*read_reviews(), settings.held_out, generator)[0])


def split_held_out(texts: list[str], labels: list[int], share: float,
                   generator: torch.Generator) -> tuple[list[str], list[int], list[str]]:
    """(training texts, their labels, held-out texts): the held-out ones calibrate the out-of-distribution flag."""
    order = torch.randperm(len(texts), generator=generator).tolist()
    cut = int(len(texts) * share)
    keep = sorted(order[cut:])
    return [texts[i] for i in keep], [labels[i] for i in keep], [texts[i] for i in order[:cut]]
