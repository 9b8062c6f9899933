"""Fine-tune the offline MiniLM encoder on SST-2 through the Fine-tune tab's core code; score on SST-2 validation.

    PYTHONPATH=. .venv/bin/python bench/finetune_sst2.py [--epochs 3] [--lr 1e-4] [--baseline-loop]

Trains on ../shared/data/sst2/train_4k.tsv (10% held out, stratified, to pick the best weights) and reports
accuracy and macro F1 on ../shared/data/sst2/validation.tsv (872 sentences, never seen in training), next to
the majority-class baseline and, with --baseline-loop, a plain hand-written PyTorch loop on the same data.
Target: accuracy >= 0.85 within 10 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench import sst2


def plain_loop(model_path: str, texts: list[str], labels: list[int], test_texts: list[str], epochs: int,
               lr: float, batch: int, max_length: int) -> list[int]:
    """The reference: AdamW over shuffled batches, linear decay, no Trainer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    torch.manual_seed(42)
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * ((len(texts) + batch - 1) // batch)
    sched = get_linear_schedule_with_warmup(opt, int(0.1 * steps), steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(texts)).tolist()
        for i in range(0, len(order), batch):
            rows = order[i:i + batch]
            enc = tok([texts[r] for r in rows], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            loss = model(**enc, labels=torch.tensor([labels[r] for r in rows])).loss
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
    model.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(test_texts), 64):
            enc = tok(test_texts[i:i + 64], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            preds += model(**enc).logits.argmax(-1).tolist()
    return preds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--baseline-loop", action="store_true", help="also time a plain PyTorch loop (~6 more minutes)")
    args = parser.parse_args()
    if not sst2.available():
        return 0

    import tempfile

    from core.finetune.metrics import classification_metrics
    from core.finetune.tasks import default_hyperparameters
    from core.finetune.training import FineTuneSpec, run_finetune
    from core.models.device import configure_threads
    from core.models.manager import ModelManager
    from core.models.registry import OFFLINE_ENCODER, TEXT_CLASSIFICATION
    from core.models.store import ModelStore

    threads = configure_threads(2)
    hyper = default_hyperparameters(TEXT_CLASSIFICATION)
    hyper.epochs = args.epochs or hyper.epochs
    hyper.learning_rate = args.lr or hyper.learning_rate
    hyper.batch_size = args.batch_size or hyper.batch_size
    data = sst2.train_split(hyper.seed)
    manager = ModelManager(offline=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as store_dir:
        result = run_finetune(FineTuneSpec(TEXT_CLASSIFICATION, OFFLINE_ENCODER, data, hyper),
                              ModelStore(Path(store_dir)), base_path=manager.resolve(OFFLINE_ENCODER).path)
    seconds = time.perf_counter() - start
    test = result.extra_metrics
    counts = {label: sum(test.confusion[i]) for i, label in enumerate(test.labels)}
    majority = max(counts, key=counts.get)
    print(f"threads {threads} | train {len(data.train)} | select {len(data.eval)} | test {len(data.extra_eval)} | "
          f"lr {hyper.learning_rate:g} epochs {hyper.epochs:g} batch {hyper.batch_size} max_length {hyper.max_length}")
    print(f"product (Trainer, core.finetune): accuracy {test.accuracy:.4f} | macro F1 {test.f1:.4f} | "
          f"{seconds:.0f} s total, {result.train_seconds:.0f} s training, {result.steps} steps, "
          f"best step {result.best_step}")
    print(f"majority-class baseline: accuracy {counts[majority] / sum(counts.values()):.4f}")
    if args.baseline_loop:
        start = time.perf_counter()
        path = manager.resolve(OFFLINE_ENCODER).path
        labels = data.train.classes
        preds = plain_loop(path, data.train.texts + data.eval.texts,
                           [labels.index(l) for l in data.train.labels + data.eval.labels], data.extra_eval.texts,
                           epochs=3, lr=5e-5, batch=32, max_length=64)
        loop = classification_metrics(data.extra_eval.labels, [labels[p] for p in preds], labels)
        print(f"plain PyTorch loop baseline: accuracy {loop.accuracy:.4f} | macro F1 {loop.f1:.4f} | "
              f"{time.perf_counter() - start:.0f} s")
    target_met = test.accuracy >= 0.85 and seconds <= 600
    print(f"target accuracy >= 0.85 within 600 s: {'met' if target_met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
