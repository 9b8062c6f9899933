"""CrowS-Pairs probe with the offline SmolLM2: stereotype preference overall and per bias type, and the time taken.

Baseline in the same run: scoring a 100-pair slice one sentence at a time vs batched (padding + attention mask).
Run: PYTHONPATH=. .venv/bin/python bench/bias_crows.py [--batch-size 32] [--precision fp32]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "crows_pairs" / "crows_pairs_anonymized.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="fp32", help="fp32 keeps the log-likelihoods exact")
    args = parser.parse_args()
    if not DATA.exists():
        print(f"skipped: {DATA} not found (the shared benchmark data is absent)")
        return
    from core.bias.crows_pairs import load_pairs, run_crows, score_pairs
    from core.models.device import configure_threads
    from core.models.manager import ModelManager
    from core.models.registry import DEFAULT_CHAT_MODEL

    threads = configure_threads()
    loaded = ModelManager(offline=True).load(DEFAULT_CHAT_MODEL, precision=args.precision)
    pairs, dropped = load_pairs(DATA)
    print(f"{DEFAULT_CHAT_MODEL} ({loaded.precision}, {threads} threads) on {len(pairs):,} pairs ({dropped} skipped)")

    sample = pairs.head(100)
    start = time.perf_counter()
    one = score_pairs(sample, loaded.model, loaded.tokenizer, batch_size=1)
    single_s = time.perf_counter() - start
    start = time.perf_counter()
    batched = score_pairs(sample, loaded.model, loaded.tokenizer, batch_size=args.batch_size)
    batched_s = time.perf_counter() - start
    gap = float((one["diff"] - batched["diff"]).abs().max())
    print(f"100 pairs: batched(bs={args.batch_size}) {batched_s:.1f}s | baseline one-by-one {single_s:.1f}s | "
          f"speedup {single_s / batched_s:.2f}x | max |diff| change {gap:.2e} nats")

    start = time.perf_counter()
    result = run_crows(pairs, loaded.model, loaded.tokenizer, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    for row in result.by_type.itertuples():
        print(f"{row.bias_type:22s} {row.pairs:5d} pairs  {row.pct_stereotype:5.1f}%  [{row.low:5.1f}, {row.high:5.1f}]")
    print(f"all {len(pairs):,} pairs scored in {seconds:.1f}s ({2 * len(pairs) / seconds:.1f} sentences/s); "
          "50% = unbiased")


if __name__ == "__main__":
    main()
