"""Logit lens and activation patching on SmolLM2-135M (30 layers), 2 threads: the Explain tab's code against the
textbook loop, in one run.

A 20-token prompt pair whose first 8 tokens are the same, so the sweep patches 30 layers x 12 positions of the
residual stream. Targets: logit lens <= 1 s; the whole patching sweep <= 30 s. Beside them: one plain forward pass
(what the lens adds to it) and the naive sweep, one whole forward pass per (layer, position) cell, every position
included, as TransformerLens's `generic_activation_patch` runs it; the two maps must agree.
Run: PYTHONPATH=. .venv/bin/python bench/explain_lens.py [--model ID_OR_FOLDER] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # core.models.registry.DEFAULT_CHAT_MODEL (bench imports core late)
CLEAN = "Last summer my sister and I saw the Eiffel Tower, which everyone knows is in the city of"
CORRUPTED = "Last summer my sister and I saw the Colosseum, which everyone knows is in the city of"
TARGET, FOIL = "Paris", "Rome"
LENS_TARGET_S, SWEEP_TARGET_S = 1.0, 30.0


def best_of(runs: int, fn):
    """(fastest seconds, last result) over `runs` calls: the cores are shared, the minimum is the least disturbed."""
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MODEL, help="causal LM id or local folder")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import numpy as np
    import torch

    from core.explain.attention import load_for_explain
    from core.explain.lens import logit_lens
    from core.explain.patching import Tracer, naive_sweep, patching_pair, patching_sweep
    from core.models.device import configure_threads
    from core.models.manager import ModelManager

    threads = configure_threads(args.threads)
    loaded = load_for_explain(ModelManager(offline=True), args.model, lambda f, m: print(f"  [{f:.0%}] {m}"),
                              attentions=False)
    tracer = Tracer(loaded, patching_pair(loaded, CLEAN, CORRUPTED, TARGET, FOIL))
    layers, positions = tracer.n_layers, tracer.n_positions - tracer.first_diff
    print(f"model {args.model} ({layers} layers), {threads} threads; prompt {tracer.n_positions} tokens, "
          f"{positions} positions from the first difference")
    ids = tracer.clean.tensor("cpu")
    with torch.no_grad():
        forward_s, _ = best_of(5, lambda: loaded.model(input_ids=ids, use_cache=False))
    lens_s, lens = best_of(3, lambda: logit_lens(loaded, CLEAN, f"{TARGET}, {FOIL}"))
    last = lens.n_positions - 1
    print(f"logit lens ({lens.n_rows} rows x {lens.n_positions} positions, top-10, entropy, ranks): {lens_s:.3f} s | "
          f"one plain forward pass {forward_s:.3f} s | target <= {LENS_TARGET_S:.0f} s: "
          f"{'within' if lens_s <= LENS_TARGET_S else 'OVER'}")
    print(f"  the model's answer {lens.predicted[last]!r} is the lens's top guess from {lens.row_names[lens.settles_at(last)]}")

    sweep_s, result = best_of(2, lambda: patching_sweep(tracer))
    naive_s, reference = best_of(1, lambda: naive_sweep(tracer))
    gap = float(np.abs(result.restored["resid"] - reference).max())
    print(f"patching sweep, residual stream, {layers} x {positions} = {result.runs} patched runs in {result.batches} "
          f"batches: {sweep_s:.2f} s | naive one-run-per-cell loop ({layers} x {tracer.n_positions} runs): "
          f"{naive_s:.2f} s | ratio {naive_s / sweep_s:.2f}")
    print(f"  the two maps agree to {gap:.2e}; clean difference {result.clean_diff:+.2f}, corrupted "
          f"{result.corrupted_diff:+.2f}; most restored before the last position: layer {result.best('resid')[0]}, "
          f"{tracer.clean.labels[result.best('resid')[1]]!r} ({result.best('resid')[2]:.2f})")
    print(f"target <= {SWEEP_TARGET_S:.0f} s on {threads} threads: {'within' if sweep_s <= SWEEP_TARGET_S else 'OVER'} "
          f"({sweep_s:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
