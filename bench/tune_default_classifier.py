"""How the offline sentiment classifier's training settings were chosen, without looking at any test set.

The team's `assets/sentiment_reviews.csv` is split once (seeded, stratified) into 80 % to train and 20 %
held out. Each candidate setting trains the MiniLM classifier on the 80 % and is scored on the held-out
20 %; the best held-out accuracy wins (ties: the faster build). SST-2, which `classify_quality.py` reports
on, is never read here. Copy the winner into `core/classify/default_classifier.py:TrainSettings`.

Run: PYTHONPATH=. .venv/bin/python bench/tune_default_classifier.py   (about 1-2 minutes per candidate on 2 cores)
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CANDIDATES = [dict(epochs=e, batch_size=b, learning_rate=lr) for e in (2, 3) for b in (16, 32) for lr in (5e-5, 1e-4)]


def main() -> int:
    import pandas as pd
    from sklearn.model_selection import train_test_split
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from core.classify import default_classifier
    from core.classify.classifier import predict_proba
    from core.models.device import configure_threads
    from core.models.paths import assets_dir

    threads = configure_threads()
    reviews = pd.read_csv(assets_dir() / default_classifier.DATA_FILE)
    train, held_out = train_test_split(reviews, test_size=0.2, random_state=0, stratify=reviews["label"])
    print(f"threads {threads} | {len(train)} reviews to train, {len(held_out)} held out "
          f"(from {default_classifier.DATA_FILE}; SST-2 is not read)")
    results = []
    with tempfile.TemporaryDirectory() as work:
        train_csv = Path(work) / "train.csv"
        train.to_csv(train_csv, index=False)
        for n, changes in enumerate(CANDIDATES, 1):
            settings = replace(default_classifier.TrainSettings(), **changes)
            out = Path(work) / f"candidate{n}"
            out.mkdir()
            start = time.perf_counter()
            default_classifier.build(out, settings=settings, data=train_csv)
            seconds = time.perf_counter() - start
            model = AutoModelForSequenceClassification.from_pretrained(out).eval()
            probs = predict_proba(model, AutoTokenizer.from_pretrained(out), held_out["text"].tolist())
            predicted = [probs.labels[i] for i in probs.probs.argmax(1)]
            accuracy = float((pd.Series(predicted, index=held_out.index) == held_out["label"]).mean())
            results.append((accuracy, -seconds, changes))
            print(f"{n}/{len(CANDIDATES)} {changes} | held-out accuracy {accuracy:.4f} | build {seconds:.0f} s",
                  flush=True)
    accuracy, neg_seconds, best = max(results, key=lambda r: (round(r[0], 4), r[1]))
    print(f"chosen: {best} | held-out accuracy {accuracy:.4f} | build {-neg_seconds:.0f} s "
          f"| current TrainSettings: {default_classifier.TrainSettings()}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
