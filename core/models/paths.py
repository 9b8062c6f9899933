"""Where the playground keeps its caches and the model store."""
from __future__ import annotations

import os
from pathlib import Path


# A Hugging Face Space's persistent storage (when the Space has it): kept across restarts, unlike the rest of its disk.
SPACE_STORAGE = Path("/data")


def cache_dir() -> Path:
    """Root for converted offline models, built defaults and the model store: $LLMPG_HOME, else the persistent
    storage on a Space that has it, else ~/.cache/llm-playground."""
    root = Path(os.environ["LLMPG_HOME"]) if os.environ.get("LLMPG_HOME") else default_home()
    root.mkdir(parents=True, exist_ok=True)
    return root


def default_home() -> Path:
    if os.environ.get("SPACE_ID") and SPACE_STORAGE.is_dir() and os.access(SPACE_STORAGE, os.W_OK):
        return SPACE_STORAGE / "llm-playground"
    return Path.home() / ".cache" / "llm-playground"


def assets_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "assets"


def calibration_text() -> str:
    """The team's own prose: calibrates the activation-aware compressions and the out-of-distribution flag, and is
    never an evaluation text."""
    return (assets_dir() / "calibration_text.txt").read_text(encoding="utf-8")
