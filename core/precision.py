"""Numeric precision of a loaded model: apply one, or pick the fastest faithful one on this CPU by measuring."""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass

import torch
from torch import nn

from core.paths import cache_dir

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8-dynamic")
CPU_CANDIDATES = ("fp32", "bf16", "int8-dynamic")
# A precision must keep the model's next-token predictions (int8-dynamic does not for SmolLM2: about half of
# them change, and "What is the capital of France?" stops getting "Paris") and be clearly faster than fp32.
MIN_AGREEMENT = 0.95
MIN_SPEEDUP = 1.1
PROBE_TEXT = ("The history of France spans many centuries. Paris became its capital and grew into one of the largest "
              "cities in Europe, known for art, science and food. The river Seine runs through the city.")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8-dynamic": torch.float32}


@dataclass(frozen=True)
class Measurement:
    seconds: float  # for 8 cached decode steps
    agreement: float  # share of next-token predictions equal to fp32's on PROBE_TEXT


@dataclass(frozen=True)
class PrecisionChoice:
    best: str
    seconds: dict[str, float]
    agreement: dict[str, float]


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
    return f"v2|{dims}|{platform.processor() or platform.machine()}|torch{torch.__version__}|t{torch.get_num_threads()}"


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


def probe_ids(tokenizer=None) -> torch.Tensor:
    """Token ids of a short English text (or fixed ids without a tokenizer) to compare predictions on."""
    if tokenizer is None:
        return torch.arange(3, 35).unsqueeze(0)
    return tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"]


@torch.no_grad()
def _agreement(model: nn.Module, ids: torch.Tensor, reference: torch.Tensor) -> float:
    """Share of positions where `model` predicts the same next token as the fp32 reference."""
    return float((model(input_ids=ids).logits.argmax(-1) == reference).float().mean())


def measure_cpu_precisions(fp32_model: nn.Module, ids: torch.Tensor) -> dict[str, Measurement]:
    """Decode speed and agreement with fp32 per candidate precision, each on its own copy of the model."""
    import copy

    with torch.no_grad():
        reference = fp32_model(input_ids=ids).logits.argmax(-1)
    measured = {}
    for precision in CPU_CANDIDATES:
        candidate = fp32_model if precision == "fp32" else apply_precision(copy.deepcopy(fp32_model), precision)
        _decode_seconds(candidate, 2)  # warm-up
        seconds = min(_decode_seconds(candidate) for _ in range(2))
        measured[precision] = Measurement(seconds, _agreement(candidate, ids, reference))
        del candidate
    return measured


def pick(measured: dict[str, Measurement]) -> str:
    """Fastest candidate that predicts like fp32; it must beat fp32 clearly, or timing noise would decide."""
    faithful = {p: m for p, m in measured.items() if m.agreement >= MIN_AGREEMENT}
    best = min(faithful, key=lambda p: faithful[p].seconds)  # fp32 always agrees with itself
    return best if faithful[best].seconds < measured["fp32"].seconds / MIN_SPEEDUP else "fp32"


def choose_cpu_precision(fp32_model: nn.Module, tokenizer=None) -> PrecisionChoice:
    """Fastest faithful CPU precision for this architecture, measured once and remembered on disk."""
    memo = cache_dir() / "precision_choices.json"
    known = json.loads(memo.read_text()) if memo.exists() else {}
    key = _arch_key(fp32_model)
    if key not in known:
        measured = measure_cpu_precisions(fp32_model, probe_ids(tokenizer))
        known[key] = {"best": pick(measured), "seconds": {p: m.seconds for p, m in measured.items()},
                      "agreement": {p: m.agreement for p, m in measured.items()}}
        memo.write_text(json.dumps(known, indent=1))
    return PrecisionChoice(known[key]["best"], known[key]["seconds"], known[key]["agreement"])
