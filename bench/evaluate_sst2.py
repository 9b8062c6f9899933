"""SST-2 validation as a two-choice task on the offline SmolLM2 (fp32): the Evaluate scorer against a plain
transformers loop, in one run.

Each sentence becomes "Review: <sentence>\\nSentiment:" with the choices " negative" / " positive" (lm-eval's
tokenization of a context and a continuation). The Evaluate scorer runs through a served model's engine in small
batches (rows that read the same tokens share one forward pass; only the scored positions get logits); the baseline
runs one forward pass per (sentence, choice) and sums the continuation's log-probabilities, as a plain loop does.
Targets (issue 19): the same accuracy to 3 decimals, Evaluate at least 3x faster.

    PYTHONPATH=. .venv/bin/python bench/evaluate_sst2.py [--limit 872]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "sst2" / "validation.tsv"
CHOICES = ("negative", "positive")


def plain_loop(model, tokenizer, task) -> tuple[float, float]:
    """(acc, acc_norm) from one unbatched forward pass per choice, full logits, as a plain transformers loop does."""
    import torch

    from core.evaluate.multiple_choice import encode_pair

    correct = correct_norm = 0
    with torch.inference_mode():
        for item in task.items:
            lls = []
            for choice in item.choices:
                context, continuation = encode_pair(tokenizer, item.question, " " + choice)
                ids = torch.tensor([context + continuation])
                log_probs = torch.log_softmax(model(ids).logits[0, len(context) - 1:-1].float(), -1)
                lls.append(float(log_probs.gather(1, torch.tensor(continuation)[:, None]).sum()))
            pred = max(range(len(lls)), key=lls.__getitem__)
            pred_norm = max(range(len(lls)), key=lambda i: lls[i] / len(item.choices[i]))
            correct += pred == item.answer
            correct_norm += pred_norm == item.answer
    return correct / len(task.items), correct_norm / len(task.items)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="first N sentences only")
    args = parser.parse_args()
    if not DATA.exists():
        print(f"skipped: {DATA} not found (the shared benchmark data is absent)")
        return 0
    import pandas as pd

    from core.evaluate.multiple_choice import ChoiceItem, ChoiceTask
    from core.evaluate.runs import EvaluateSettings, served_choices
    from core.models.device import configure_threads
    from core.models.manager import ModelManager
    from core.models.registry import DEFAULT_CHAT_MODEL
    from core.services import Services

    threads = configure_threads(2)
    frame = pd.read_csv(DATA, sep="\t", quoting=3).head(args.limit)
    items = tuple(ChoiceItem(n + 1, f"Review: {row.sentence.strip()}\nSentiment:", CHOICES, int(row.label))
                  for n, row in enumerate(frame.itertuples()))
    task = ChoiceTask("SST-2 validation", items, str(DATA), "")
    served = Services(manager=ModelManager(offline=True)).chat.serve(DEFAULT_CHAT_MODEL, precision="fp32")
    print(f"{DEFAULT_CHAT_MODEL} ({served.backend.describe()}, {threads} threads), {len(items)} SST-2 validation "
          f"sentences, 2 choices each")

    plain_loop(served.loaded.model, served.tokenizer, ChoiceTask("warm-up", items[:8], "", ""))
    start = time.perf_counter()
    base_acc, base_norm = plain_loop(served.loaded.model, served.tokenizer, task)
    base_s = time.perf_counter() - start
    served_choices(served, ChoiceTask("warm-up", items[:8], "", ""), EvaluateSettings())
    start = time.perf_counter()
    ours = served_choices(served, task, EvaluateSettings())
    ours_s = time.perf_counter() - start

    print(f"acc:      Evaluate {ours.acc.estimate:.3f} [{ours.acc.low:.3f}, {ours.acc.high:.3f}] | plain loop "
          f"{base_acc:.3f} | same to 3 decimals: {'yes' if round(ours.acc.estimate, 3) == round(base_acc, 3) else 'NO'}")
    print(f"acc_norm: Evaluate {ours.acc_norm.estimate:.3f} | plain loop {base_norm:.3f} | same to 3 decimals: "
          f"{'yes' if round(ours.acc_norm.estimate, 3) == round(base_norm, 3) else 'NO'}")
    print(f"time:     Evaluate {ours_s:.1f} s | plain loop {base_s:.1f} s | ratio {base_s / ours_s:.2f}x "
          f"(target >= 3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
