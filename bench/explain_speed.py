"""SHAP speed on the offline MiniLM sentiment classifier: our default budget vs shap's own defaults, one run.

Explains one ~20-token SST-2 validation sentence (from ../shared/data) and prints seconds and model
evaluations for the Explain tab's default (budget 300, batches of 32) next to shap's defaults
(Partition budget 500), plus how closely the two agree. Target: <= 10 s on 2 cores for the default.
Run: PYTHONPATH=. .venv/bin/python bench/explain_speed.py [--model ID_OR_FOLDER]
(the offline classifier is built on first use, about a minute on quiet cores; --model times another classifier)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "sst2" / "validation.tsv"
MODEL = "llm-playground/minilm-sentiment"  # core.models.registry.OFFLINE_CLASSIFIER (bench imports core late)
TARGET_TOKENS = 20
TARGET_SECONDS = 10.0


def pick_sentence(tokenizer) -> str:
    """The first validation sentence with exactly 20 word-piece tokens (special tokens not counted)."""
    import pandas as pd

    sentences = pd.read_csv(DATA, sep="\t", quoting=3)["sentence"].astype(str)
    return next(s for s in sentences if len(tokenizer(s, add_special_tokens=False)["input_ids"]) == TARGET_TOKENS)


def shap_defaults(loaded, text: str) -> tuple[float, int, int, "object"]:
    """shap's Partition explainer with nothing set: its own budget and batch size."""
    import numpy as np

    from core.explain.shap_attribution import class_log_odds, load_shap

    calls = {"evals": 0, "batches": 0}

    def score(texts):
        calls["evals"] += len(texts)
        calls["batches"] += 1
        return class_log_odds(loaded, [str(t) for t in texts])

    shap = load_shap()
    start = time.perf_counter()
    explanation = shap.Explainer(score, shap.maskers.Text(loaded.tokenizer), algorithm="partition")([text], silent=True)
    values = np.asarray(explanation.values[0])[[str(t) != "" for t in explanation.data[0]]]
    return time.perf_counter() - start, calls["evals"], calls["batches"], values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MODEL, help="classifier id or local folder")
    model_id = parser.parse_args(argv).model
    if not DATA.is_file():
        print(f"explain_speed: {DATA} is absent; nothing to measure.")
        return 0
    import numpy as np

    from core.explain.attention import load_for_explain
    from core.explain.shap_attribution import DEFAULT_MAX_EVALS, SHAP_DEFAULT_MAX_EVALS, explain_classifier
    from core.models.device import configure_threads
    from core.models.manager import ModelManager

    threads = configure_threads(2)
    loaded = load_for_explain(ModelManager(offline=True), model_id, lambda f, m: print(f"  [{f:.0%}] {m}"))
    text = pick_sentence(loaded.tokenizer)
    start = time.perf_counter()
    explain_classifier(loaded, "A short warm-up sentence.", max_evals=20)  # imports shap, warms torch
    print(f"model {model_id}, {threads} threads; first use (shap import + warm-up): {time.perf_counter() - start:.1f} s")
    print(f"sentence ({TARGET_TOKENS} tokens): {text!r}")

    ours = min((explain_classifier(loaded, text, max_evals=DEFAULT_MAX_EVALS) for _ in range(2)), key=lambda a: a.seconds)
    base_seconds, base_evals, base_batches, base_values = min((shap_defaults(loaded, text) for _ in range(2)),
                                                              key=lambda r: r[0])
    positive = ours.output_names.index("positive")
    agreement = np.corrcoef(ours.values[:, positive], base_values[:, positive])[0, 1]
    same_top = ours.strongest(positive, 1)[0][0] == int(np.argmax(np.abs(base_values[:, positive])))
    print(f"explain tab default (budget {DEFAULT_MAX_EVALS}, batches of 32): {ours.seconds:.2f} s, "
          f"{ours.model_evals} evaluations in {ours.batches} batches | shap defaults (budget {SHAP_DEFAULT_MAX_EVALS}): "
          f"{base_seconds:.2f} s, {base_evals} evaluations in {base_batches} calls | speed-up {base_seconds / ours.seconds:.2f}x")
    print(f"agreement with shap defaults on 'positive': correlation {agreement:.3f}, same strongest token: {same_top}")
    verdict = "within" if ours.seconds <= TARGET_SECONDS else "OVER"
    print(f"target <= {TARGET_SECONDS:.0f} s on 2 cores: {verdict} ({ours.seconds:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
