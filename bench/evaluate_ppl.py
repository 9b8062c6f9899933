"""Perplexity and bits per byte of assets/eval_text.txt on the offline SmolLM2, as the Evaluate tab measures them
(through the chat engines), next to the Quantize tab's numbers for the same model in the same run.

Rows: fp32, what the Chat tab serves (the measured choice, "auto") and int8 weight-only. Both tabs use the same
sliding windows (512 tokens, stride 256; core.evaluate.perplexity), so the numbers must agree. Quantize's int8-weight
variant also stores the embedding tables in int8, which Chat's int8-weight does not: that row may differ slightly.

    PYTHONPATH=. .venv/bin/python bench/evaluate_ppl.py
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
PRECISIONS = ("fp32", "auto", "int8-weight")


def quantize_variant(runtime: str, precision: str) -> str:
    """The Quantize row that is the same model as a served one; an ONNX export Quantize has no row for (fp32) is
    compared with the PyTorch row at its precision."""
    from core.quantize.variants import VARIANTS

    onnx = f"onnx-{precision}"
    return onnx if runtime == "ONNX Runtime" and onnx in VARIANTS else precision


def main() -> int:
    if not (ROOT.parent / "shared" / "data").is_dir():
        print("../shared/data is absent: benchmarks run only on the team's benchmark machine; nothing measured.")
        return 0
    from core.evaluate.runs import EvaluateSettings, ModelSpec, evaluate_perplexity
    from core.models.device import configure_threads
    from core.models.manager import ModelManager
    from core.models.registry import CAUSAL_LM, DEFAULT_CHAT_MODEL
    from core.quantize.metrics import EvalSettings, compare_variants
    from core.services import Services

    threads = configure_threads(2)
    text = (ROOT / "assets" / "eval_text.txt").read_text(encoding="utf-8")
    services = Services(manager=ModelManager(offline=True))
    start = time.perf_counter()
    *_, run = evaluate_perplexity(services.chat, [ModelSpec(DEFAULT_CHAT_MODEL, p) for p in PRECISIONS], text,
                                  "assets/eval_text.txt", EvaluateSettings())
    evaluate_s = time.perf_counter() - start
    failed = [r for r in run.rows if r.status != "ok"]
    if failed:
        print("\n".join(f"{r.precision}: {r.message}" for r in failed))
        return 1
    served = {r.precision: r for r in run.rows}
    runtime = {p: services.chat.serve(DEFAULT_CHAT_MODEL, precision=p).backend for p in PRECISIONS}
    variants = {p: quantize_variant(runtime[p].runtime, runtime[p].precision) for p in PRECISIONS}

    base = services.manager.load(DEFAULT_CHAT_MODEL, CAUSAL_LM, precision="fp32")
    start = time.perf_counter()
    *_, comparison = compare_variants(base.model_id, CAUSAL_LM, base.model, base.tokenizer, list(variants.values()),
                                      text, settings=EvalSettings(max_eval_tokens=65_536, decode_tokens=1, repeats=1))
    quantize_s = time.perf_counter() - start
    quantized = {r.variant: r for r in comparison.results}

    first = run.rows[0]
    print(f"{DEFAULT_CHAT_MODEL}, assets/eval_text.txt: {first.tokens + 1:,} tokens, {first.bytes:,} bytes scored, "
          f"windows of {first.context} tokens, stride {first.stride}, {threads} threads")
    print(f"{'row':12s} {'served by':32s} {'Evaluate ppl':>12s} {'bits/byte':>9s} | {'Quantize row':14s} "
          f"{'Quantize ppl':>12s} | ratio")
    for p in PRECISIONS:
        row, other = served[p], quantized[variants[p]]
        ratio = row.perplexity / other.perplexity if other.perplexity else float("nan")
        print(f"{p:12s} {row.runtime:32s} {row.perplexity:12.3f} {row.bits_per_byte:9.4f} | {variants[p]:14s} "
              f"{other.perplexity or float('nan'):12.3f} | {ratio:.4f}" + (f"  ({other.notes})" if other.status != "ok"
                                                                           else ""))
    print(f"seconds: Evaluate {evaluate_s:.1f} (three engines, loads included) | Quantize {quantize_s:.1f} "
          "(builds and speed timings included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
