"""Compression that keeps the model alive: activation-aware pruning and low-rank next to the naive methods, one run.

On the default model (SmolLM2-135M-Instruct, fp32 baseline): magnitude pruning vs Wanda at the same sparsity, and
plain SVD vs SVD-LLM (whitened) at the same cut of the linear layers' parameters. The activation-aware rows
calibrate on assets/calibration_text.txt; every row is scored on assets/eval_text.txt (never used to calibrate).

    PYTHONPATH=. .venv/bin/python bench/prune_compare.py [--sparsity 0.5] [--cut 0.2]

Targets (issue 13): Wanda's perplexity at most half of magnitude pruning's; SVD-LLM at a 20 % cut at most 3x fp32.
The "+lora" rows heal Wanda and SVD-LLM with LoRA on the team's reviews (core/quantize/healing.py): before and after.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--cut", type=float, default=0.2)
    parser.add_argument("--tokens", type=int, default=1024, help="evaluation tokens")
    parser.add_argument("--no-heal", action="store_true", help="skip the LoRA-healed rows (about 5 minutes)")
    args = parser.parse_args()
    from core.models.device import configure_threads
    from core.models.manager import ModelManager
    from core.models.paths import assets_dir
    from core.models.registry import CAUSAL_LM, DEFAULT_CHAT_MODEL
    from core.quantize.metrics import EvalSettings, compare_variants
    from core.quantize.variants import CompressionOptions

    threads = configure_threads()
    base = ModelManager(offline=True).load(DEFAULT_CHAT_MODEL, CAUSAL_LM, precision="fp32")
    text = (assets_dir() / "eval_text.txt").read_text(encoding="utf-8")
    variants = ["pruned", "wanda", "wanda-2:4", "low-rank", "svd-llm"] + ([] if args.no_heal else ["wanda+lora", "svd-llm+lora"])
    *_, comparison = compare_variants(DEFAULT_CHAT_MODEL, CAUSAL_LM, base.model, base.tokenizer, variants, text,
                                      CompressionOptions(args.sparsity, args.cut),
                                      EvalSettings(max_eval_tokens=args.tokens, decode_tokens=8, repeats=1))
    rows = {r.variant: r for r in comparison.results}
    print(f"threads {threads} | {DEFAULT_CHAT_MODEL} | evaluated on {comparison.eval_tokens} tokens of "
          f"assets/eval_text.txt | calibrated on assets/calibration_text.txt")
    for name, r in rows.items():
        print(f"{name:10s} perplexity {r.perplexity:12.2f} | top-1 agreement {r.top1_agreement:.3f} | "
              f"KL {r.mean_kl:.3f} | {r.notes.split(';')[-1].strip() if r.notes else ''}"[:160])
    fp32 = rows["fp32"].perplexity
    print(f"pruning at {args.sparsity:.0%}: magnitude {rows['pruned'].perplexity:.2f} | Wanda {rows['wanda'].perplexity:.2f} "
          f"| ratio {rows['wanda'].perplexity / rows['pruned'].perplexity:.3f} (target <= 0.5)")
    print(f"low rank at a {args.cut:.0%} cut: plain SVD {rows['low-rank'].perplexity:.2f} | SVD-LLM "
          f"{rows['svd-llm'].perplexity:.2f} = {rows['svd-llm'].perplexity / fp32:.2f}x fp32 {fp32:.2f} (target <= 3x)")
    for name in ("wanda", "svd-llm"):
        if f"{name}+lora" in rows:
            healed = rows[f"{name}+lora"].perplexity
            print(f"healed with LoRA: {name} {rows[name].perplexity:.2f} -> {healed:.2f} = {healed / fp32:.2f}x fp32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
