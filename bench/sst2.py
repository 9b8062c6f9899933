"""What the SST-2 fine-tuning benchmarks share: where the data is, and the split every one of them uses."""
from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "sst2"


def available() -> bool:
    """True when ../shared/data/sst2 is here; otherwise says so (the benchmark then exits 0)."""
    if (DATA / "train_4k.tsv").exists() and (DATA / "validation.tsv").exists():
        return True
    print(f"SST-2 data not found at {DATA}; nothing to benchmark.")
    return False


def train_split(seed: int, with_test: bool = True):
    """train_4k.tsv with 10 % held out (stratified) to pick the best weights; validation.tsv, never used for a
    choice, as the scored test set (the Fine-tune tab's out-of-domain slot)."""
    from core.finetune.data import ColumnMapping, prepare
    from core.models.registry import TEXT_CLASSIFICATION

    return prepare(TEXT_CLASSIFICATION, DATA / "train_4k.tsv", ColumnMapping(text="sentence", label="label"),
                   eval_percent=10, extra_eval_path=DATA / "validation.tsv" if with_test else None, seed=seed)
