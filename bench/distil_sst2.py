"""Distil the offline MiniLM sentiment classifier (6 layers) into a 3-layer student on SST-2, through the
Fine-tune tab's core code, next to the same student trained on the labels alone, in one run.

    PYTHONPATH=. .venv/bin/python bench/distil_sst2.py [--alpha 0.5] [--temperature 2] [--epochs 3]

Trains on ../shared/data/sst2/train_4k.tsv (10% held out, stratified, picks the best weights); accuracy and macro
F1 on ../shared/data/sst2/validation.tsv (872 sentences, never used for any choice). Speed: texts/s of each model
over the validation sentences (batches of 32, this machine's threads), median of 5 alternating passes.
Target (issue 12): the student within 2 points of the teacher, at least 1.8x its texts/s, and above the
no-teacher student.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import sst2


def texts_per_second(model, tokenizer, texts: list[str]) -> float:
    from core.classify.classifier import predict_proba

    start = time.perf_counter()
    predict_proba(model, tokenizer, texts, batch_size=32, max_length=64)
    return len(texts) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alpha", type=float, default=None, help="weight of the teacher's KL term")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--layers", type=int, default=3)
    args = parser.parse_args()
    if not sst2.available():
        return 0
    from dataclasses import replace

    from core.classify.classifier import predict_proba
    from core.finetune.metrics import classification_metrics
    from core.finetune.tasks import default_hyperparameters
    from core.finetune.training import FineTuneSpec, run_finetune
    from core.models.device import configure_threads
    from core.models.manager import ModelManager
    from core.models.registry import OFFLINE_CLASSIFIER, TEXT_CLASSIFICATION
    from core.models.store import ModelStore

    threads = configure_threads(2)
    base = default_hyperparameters(TEXT_CLASSIFICATION)
    hyper = replace(base, distil=True, student_layers=args.layers, compare=True,
                    distil_alpha=base.distil_alpha if args.alpha is None else args.alpha,
                    distil_temperature=args.temperature or base.distil_temperature, epochs=args.epochs or base.epochs)
    data = sst2.train_split(hyper.seed)
    manager = ModelManager(offline=True)
    teacher_path = manager.resolve(OFFLINE_CLASSIFIER).path
    with tempfile.TemporaryDirectory() as store_dir:
        store = ModelStore(Path(store_dir))
        start = time.perf_counter()
        result = run_finetune(FineTuneSpec(TEXT_CLASSIFICATION, OFFLINE_CLASSIFIER, data, hyper, "student"), store,
                              base_path=teacher_path)
        seconds = time.perf_counter() - start
        folders = {"teacher": teacher_path, "student": str(result.folder),
                   "no-teacher student": str(store.root / "student-plain")}
        models = {name: manager.load(path, TEXT_CLASSIFICATION) for name, path in folders.items()}
        test = data.extra_eval.texts
        speeds: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(5):  # alternate, so drift in the machine's speed hits every model alike
            for name, loaded in models.items():
                speeds[name].append(texts_per_second(loaded.model, loaded.tokenizer, test))
        print(f"threads {threads} | train {len(data.train)} | select {len(data.eval)} | test {len(test)} | "
              f"student {args.layers} layers | alpha {hyper.distil_alpha:g} | T {hyper.distil_temperature:g} | "
              f"lr {hyper.learning_rate:g} epochs {hyper.epochs:g} batch {hyper.batch_size} | {seconds:.0f} s")
        rows = {}
        for name, loaded in models.items():
            probs = predict_proba(loaded.model, loaded.tokenizer, test, max_length=64)
            names = [probs.labels[i] for i in probs.probs.argmax(1)]
            truth = [loaded.model.config.id2label[int(label)] for label in data.extra_eval.labels]
            metrics = classification_metrics(truth, names, sorted(set(truth)))
            params = sum(p.numel() for p in loaded.model.parameters())
            rows[name] = (metrics.accuracy, statistics.median(speeds[name]))
            print(f"{name:20s} params {params / 1e6:6.2f} M | accuracy {metrics.accuracy:.4f} | macro F1 "
                  f"{metrics.f1:.4f} | {rows[name][1]:7.1f} texts/s")
    (t_acc, t_speed), (s_acc, s_speed), (b_acc, _) = rows.values()
    print(f"student - teacher accuracy {100 * (s_acc - t_acc):+.1f} points (target >= -2) | speed ratio "
          f"{s_speed / t_speed:.2f}x (target >= 1.8) | student - no-teacher {100 * (s_acc - b_acc):+.1f} points "
          f"(target > 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
