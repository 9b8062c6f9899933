"""Where the playground keeps its caches and the model store."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root for converted offline models, built defaults and the model store ($LLMPG_HOME)."""
    root = Path(os.environ.get("LLMPG_HOME", Path.home() / ".cache" / "llm-playground"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def assets_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "assets"


def calibration_text() -> str:
    """The team's own prose: calibrates the activation-aware compressions and the out-of-distribution flag, and is
    never an evaluation text."""
    return (assets_dir() / "calibration_text.txt").read_text(encoding="utf-8")
