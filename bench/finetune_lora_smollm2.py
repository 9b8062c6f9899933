"""LoRA on the offline SmolLM2-135M-Instruct lowers perplexity on the held-out part of a small text.

    PYTHONPATH=. .venv/bin/python bench/finetune_lora_smollm2.py [--lines 200] [--epochs 1] [--lr 5e-4]

The text is the first `--lines` sentences of ../shared/data/sst2/train_4k.tsv (movie-review fragments, a
domain the chat model was not tuned for), one example per line; 20% of the lines are held out. The run goes
through the Fine-tune tab's core code (core.finetune) and prints held-out perplexity before (the baseline,
measured in the same run) and after, with the trainable parameter count and the time taken.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "sst2" / "train_4k.tsv"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=5e-4)
    args = parser.parse_args()
    if not DATA.exists():
        print(f"SST-2 data not found at {DATA}; nothing to benchmark.")
        return 0

    import pandas as pd

    from core.finetune.data import ColumnMapping, prepare
    from core.finetune.tasks import default_hyperparameters
    from core.finetune.training import FineTuneSpec, run_finetune
    from core.models.device import configure_threads
    from core.models.manager import ModelManager
    from core.models.registry import CAUSAL_LM, DEFAULT_CHAT_MODEL
    from core.models.store import ModelStore

    threads = configure_threads(2)
    manager = ModelManager(offline=True)
    with tempfile.TemporaryDirectory() as work:
        text = Path(work) / "reviews.txt"
        sentences = pd.read_csv(DATA, sep="\t")["sentence"].head(args.lines)
        text.write_text("\n".join(s.strip() for s in sentences))
        data = prepare(CAUSAL_LM, text, ColumnMapping(), eval_percent=20)
        hyper = default_hyperparameters(CAUSAL_LM)
        hyper.epochs, hyper.learning_rate, hyper.max_length = args.epochs, args.lr, 64
        start = time.perf_counter()
        result = run_finetune(FineTuneSpec(CAUSAL_LM, DEFAULT_CHAT_MODEL, data, hyper),
                              ModelStore(Path(work) / "store"),
                              base_path=manager.resolve(DEFAULT_CHAT_MODEL).path)
        seconds = time.perf_counter() - start
    ppl = result.metrics
    print(f"threads {threads} | {len(data.train)} training lines, {len(data.eval)} held out ({ppl.tokens} tokens) | "
          f"LoRA r {hyper.lora_r} alpha {hyper.lora_alpha} | lr {hyper.learning_rate:g} epochs {hyper.epochs:g}")
    print(f"trainable parameters {result.trainable_params:,} of {result.total_params:,} "
          f"({100 * result.trainable_params / result.total_params:.2f}%)")
    print(f"held-out perplexity: before (baseline) {ppl.before:.2f} | after LoRA {ppl.after:.2f} | "
          f"ratio {ppl.after / ppl.before:.3f} | {result.steps} steps, {result.train_seconds:.0f} s training, "
          f"{seconds:.0f} s total")
    print(f"perplexity lowered: {'yes' if ppl.after < ppl.before else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
