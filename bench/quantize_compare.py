"""Compare compressed variants of the offline SmolLM2-135M-Instruct: size, speed and quality against fp32.

    PYTHONPATH=. .venv/bin/python bench/quantize_compare.py [--variants fp32,int8-dynamic,...] [--tokens 2048]

Prints the full table, then each int8 variant's serialized size, decode speed and quality next to fp32, measured in the same run.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="fp32,bf16,fp16,int8-dynamic,int8-weight,bnb-int8,bnb-nf4,"
                                              "torchao-int8,torchao-int4,pruned,low-rank")
    parser.add_argument("--tokens", type=int, default=2048, help="evaluation tokens of assets/eval_text.txt")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--cut", type=float, default=0.2, help="share of linear parameters low-rank removes")
    args = parser.parse_args()
    if not (ROOT.parent / "shared" / "data").is_dir():
        print("../shared/data is absent: benchmarks run only on the team's benchmark machine; nothing measured.")
        return 0

    import pandas as pd

    from core.models.device import configure_threads
    from core.models.manager import ModelManager
    from core.models.registry import CAUSAL_LM, DEFAULT_CHAT_MODEL
    from core.quantize.metrics import EvalSettings, compare_variants
    from core.quantize.variants import CompressionOptions, calibrated

    threads = configure_threads(2)
    base = ModelManager(offline=True).load(DEFAULT_CHAT_MODEL, CAUSAL_LM, precision="fp32")
    text = (ROOT / "assets" / "eval_text.txt").read_text(encoding="utf-8")
    runs = compare_variants(base.model_id, CAUSAL_LM, base.model, base.tokenizer, args.variants.split(","), text,
                            calibrated(CompressionOptions(args.sparsity, args.cut), base.tokenizer), EvalSettings(max_eval_tokens=args.tokens),
                            progress=lambda _f, msg: print(msg, file=sys.stderr, flush=True))
    *_, comparison = runs  # the generator's last table has every variant
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    pd.set_option("display.max_colwidth", 60)
    print(f"SmolLM2-135M-Instruct, {comparison.eval_tokens} tokens of assets/eval_text.txt, {threads} threads, CPU")
    print(comparison.frame().drop(columns=["description"]).to_string(index=False))
    rows = {r.variant: r for r in comparison.ok()}
    fp32 = rows["fp32"]
    for name in ("int8-dynamic", "int8-weight"):
        if name in rows:
            int8 = rows[name]
            print(f"{name}: serialized size {int8.size_mb:.1f} MiB | fp32 {fp32.size_mb:.1f} MiB | "
                  f"ratio {fp32.size_mb / int8.size_mb:.2f}x smaller")
            print(f"{name}: decode {int8.decode_tok_s:.1f} tok/s | fp32 {fp32.decode_tok_s:.1f} tok/s | "
                  f"ratio {int8.decode_tok_s / fp32.decode_tok_s:.2f}; prefill {int8.prefill_ms:.0f} ms | "
                  f"fp32 {fp32.prefill_ms:.0f} ms")
            print(f"{name}: perplexity {int8.perplexity:.3f} | fp32 {fp32.perplexity:.3f}; "
                  f"top-1 agreement {int8.top1_agreement:.1%}, mean KL {int8.mean_kl:.4f} nats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
