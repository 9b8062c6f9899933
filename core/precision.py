"""Numeric precision of a loaded model: apply one, or pick the fastest on this CPU by measuring."""
from __future__ import annotations

import json
import platform
import time

import torch
from torch import nn

from core.paths import cache_dir

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8-dynamic")
CPU_CANDIDATES = ("fp32", "bf16", "int8-dynamic")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8-dynamic": torch.float32}


def load_dtype(precision: str) -> torch.dtype:
    """dtype to load weights in before `apply_precision` (int8 is quantized from fp32)."""
    return _DTYPES[precision]


def apply_precision(model: nn.Module, precision: str) -> nn.Module:
    """Convert an fp32 model in place (dtype) or return its int8 dynamic-quantized copy."""
    if precision == "int8-dynamic":
        # Deprecated in torch 2.13 but still the fastest int8 path on x86 CPUs (GUIDE section 4).
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    return model.to(_DTYPES[precision])


def default_precision(device_kind: str) -> str:
    if device_kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device_kind == "mps":
        return "fp16"
    return "fp32"


def _arch_key(model: nn.Module) -> str:
    cfg = model.config
    dims = [getattr(cfg, k, None) for k in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")]
    return f"{dims}|{platform.processor() or platform.machine()}|torch{torch.__version__}|t{torch.get_num_threads()}"


@torch.no_grad()
def _decode_seconds(model: nn.Module, steps: int = 8) -> float:
    """Seconds for `steps` single-token forward passes with a KV cache (the chat hot loop)."""
    ids = torch.ones((1, 16), dtype=torch.long)
    out = model(input_ids=ids, use_cache=True)
    past = out.past_key_values
    nxt = ids[:, -1:]
    start = time.perf_counter()
    for _ in range(steps):
        out = model(input_ids=nxt, past_key_values=past, use_cache=True)
        past = out.past_key_values
    return time.perf_counter() - start


def measure_cpu_precisions(fp32_model: nn.Module) -> dict[str, float]:
    """Decode seconds per candidate precision, each on its own copy of the fp32 model."""
    import copy

    timings = {}
    for precision in CPU_CANDIDATES:
        candidate = apply_precision(copy.deepcopy(fp32_model), precision)
        _decode_seconds(candidate, 2)  # warm-up
        timings[precision] = min(_decode_seconds(candidate) for _ in range(2))
        del candidate
    return timings


def choose_cpu_precision(fp32_model: nn.Module) -> tuple[str, dict[str, float]]:
    """Fastest CPU precision for this architecture, measured once and remembered on disk."""
    memo = cache_dir() / "precision_choices.json"
    known = json.loads(memo.read_text()) if memo.exists() else {}
    key = _arch_key(fp32_model)
    if key not in known:
        timings = measure_cpu_precisions(fp32_model)
        known[key] = {"best": min(timings, key=timings.get), "seconds": timings}
        memo.write_text(json.dumps(known, indent=1))
    return known[key]["best"], known[key]["seconds"]
