"""Numeric precision of a loaded model: apply one, or pick the fastest faithful one on this CPU by measuring."""
from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from core.common.json_cache import locked, read_json, write_json
from core.models.device import cpu_signature
from core.models.paths import cache_dir

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "fp16-weight", "int8-dynamic", "int8-weight")
# int8-dynamic is no candidate: it quantizes each input with one scale for the whole batch, so in the shared chat engine
# a reply would change with whoever else is in the batch (0.14 on a 64-wide layer, measured). Quantize still has it.
CPU_CANDIDATES = ("fp32", "bf16", "fp16-weight", "int8-weight")
# A precision must keep the model's next-token predictions and be clearly faster than fp32. On PROBE_TEXT
# (100 SmolLM2 tokens) fp16-weight keeps 100%, bf16 99%, int8-weight 96%, int8-dynamic only 38%: it quantizes
# activations too, and SmolLM2 then stops answering "Paris" to "What is the capital of France?".
MIN_AGREEMENT = 0.9
MIN_SPEEDUP = 1.1
# Candidates are ranked by the time of a typical chat turn, not by decode speed alone: on a CPU without native
# bf16 (AVX2 only), bf16 decodes as fast as fp16-weight but takes ~5x longer to read a 50-token prompt.
TURN_PROMPT_TOKENS, TURN_NEW_TOKENS = 64, 64
PROBE_TEXT = ("The history of France spans many centuries. Paris became its capital and grew into one of the largest "
              "cities in Europe, known for art, science and food. The river Seine runs through the city. Language "
              "models predict the next word from the words before it. They are trained on large amounts of text and "
              "can answer questions, write stories and translate between languages. In the morning the children "
              "walked to school, carrying their books and a small lunch. The teacher asked them to write about "
              "their favourite animal.")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp16-weight": torch.float32,
           "int8-dynamic": torch.float32, "int8-weight": torch.float32}
_DYNAMIC = {"fp16-weight": torch.float16, "int8-dynamic": torch.qint8}  # packed weight dtype per dynamic precision


@dataclass(frozen=True)
class Measurement:
    prefill_s: float  # reading a TURN_PROMPT_TOKENS prompt
    token_s: float  # one cached decode step
    agreement: float  # share of next-token predictions equal to fp32's on PROBE_TEXT

    @property
    def turn_seconds(self) -> float:
        """A typical chat turn: read the prompt, then write TURN_NEW_TOKENS tokens."""
        return self.prefill_s + TURN_NEW_TOKENS * self.token_s


@dataclass(frozen=True)
class PrecisionChoice:
    best: str
    measured: dict[str, Measurement]
    skipped: dict[str, str] = field(default_factory=dict)  # candidate -> why it was not measured (memory)


def load_dtype(precision: str) -> torch.dtype:
    """dtype to load weights in before `apply_precision` (int8 is quantized from fp32)."""
    return _DTYPES[precision]


class Int8WeightLinear(nn.Module):
    """A linear layer holding int8 weights with one scale per output row; everything around it stays fp32.

    Decoding one token reads every weight once, so on a CPU its speed is set by memory traffic: int8
    weights move a quarter of fp32's bytes. Unlike int8-dynamic, activations are not quantized (only
    rounded to bf16 for the matmul), which keeps models with activation outliers such as SmolLM2
    predicting like fp32. `torch._weight_int8pack_mm` is the CPU int8 weight-only kernel that
    gpt-fast and torchao call; it needs bf16 inputs to take its vectorized path.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        weight = weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        quantized = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("weight_int8", quantized.contiguous())  # the kernel needs contiguous rows
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.register_buffer("bias", None if bias is None else bias.detach().float())
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    @staticmethod
    def supports(in_features: int) -> bool:
        # The kernel reads the inner dimension in vector-width blocks; odd widths crash it.
        return in_features % 32 == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        out = torch._weight_int8pack_mm(flat, self.weight_int8, self.scales).to(x.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def conv1d_to_linear(model: nn.Module) -> int:
    """Replace transformers' Conv1D (y = x W + b, W stored in x out) by the same nn.Linear; returns how many."""
    from transformers.pytorch_utils import Conv1D

    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                n_in, n_out = child.weight.shape
                linear = nn.Linear(n_in, n_out, bias=child.bias is not None, dtype=child.weight.dtype)
                linear.weight.data = child.weight.data.t().contiguous()
                if child.bias is not None:
                    linear.bias.data = child.bias.data.clone()
                setattr(parent, name, linear)
                replaced += 1
    return replaced


def dynamic_linears(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy with every nn.Linear (GPT-2's Conv1D rewritten as one first, or it is skipped silently) packed
    for fbgemm's dynamic kernels.

    torch.float16: fp16 weights, fp32 activations and accumulation, so predictions match fp32 (fp16 keeps 3
    more mantissa bits than bf16) while each decode step reads half the weight bytes.
    torch.qint8: int8 weights, activations quantized per tensor at run time (see MIN_AGREEMENT).
    """
    conv1d_to_linear(model)
    with warnings.catch_warnings():  # torch.ao is deprecated in 2.13 but its fbgemm kernels are the fast CPU path
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=dtype)


def int8_weight_only(model: nn.Module) -> nn.Module:
    """Swap every nn.Linear (GPT-2's Conv1D rewritten as one first) for an Int8WeightLinear, in place."""
    conv1d_to_linear(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and Int8WeightLinear.supports(child.in_features):
                setattr(parent, name, Int8WeightLinear(child.weight, child.bias))
    return model


def apply_precision(model: nn.Module, precision: str) -> nn.Module:
    """Convert an fp32 model in place (dtype, int8 weights) or return its dynamic-quantized copy."""
    if precision in _DYNAMIC:
        return dynamic_linears(model, _DYNAMIC[precision])
    if precision == "int8-weight":
        return int8_weight_only(model)
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
    return f"v7|{dims}|{cpu_signature()}|torch{torch.__version__}|t{torch.get_num_threads()}"


@torch.no_grad()
def _turn_timings(model: nn.Module, steps: int = 8) -> tuple[float, float]:
    """(seconds to read a TURN_PROMPT_TOKENS prompt, seconds per cached single-token step: the chat hot loop)."""
    ids = torch.ones((1, TURN_PROMPT_TOKENS), dtype=torch.long)
    start = time.perf_counter()
    out = model(input_ids=ids, use_cache=True)
    prefill = time.perf_counter() - start
    past = out.past_key_values
    nxt = ids[:, -1:]
    start = time.perf_counter()
    for _ in range(steps):
        out = model(input_ids=nxt, past_key_values=past, use_cache=True)
        past = out.past_key_values
    return prefill, (time.perf_counter() - start) / steps


def probe_ids(tokenizer=None, limit: int = 128) -> torch.Tensor:
    """Token ids of a short English text (or fixed ids without a tokenizer) to compare predictions on."""
    if tokenizer is None:
        return torch.arange(3, 35).unsqueeze(0)
    return tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"][:, :limit]


@torch.no_grad()
def _agreement(model: nn.Module, ids: torch.Tensor, reference: torch.Tensor) -> float:
    """Share of positions where `model` predicts the same next token as the fp32 reference."""
    return float((model(input_ids=ids).logits.argmax(-1) == reference).float().mean())


def copy_bytes(fp32_model: nn.Module, precision: str) -> int:
    """Memory a candidate needs while it is built: a deep copy of the fp32 weights, plus the packed copy
    that quantize_dynamic makes beside it."""
    fp32_bytes = sum(t.numel() * t.element_size() for t in fp32_model.state_dict().values())
    return fp32_bytes * (2 if precision in _DYNAMIC else 1)


def measure_cpu_precisions(fp32_model: nn.Module, ids: torch.Tensor, rounds: int = 3,
                           free_bytes: Callable[[], int] | None = None) -> tuple[dict[str, Measurement], dict[str, str]]:
    """Prompt and decode speed and agreement with fp32 per candidate, and the candidates skipped (with why).

    One candidate copy exists at a time and is released before the next is built, so a model that fits
    once is never held four times over; a candidate whose copy would not fit in `free_bytes()` is skipped.
    Each candidate keeps its best of `rounds` timings, so a burst of load on a shared machine does not decide.
    """
    import copy
    import gc

    with torch.no_grad():
        reference = fp32_model(input_ids=ids).logits.argmax(-1)
    measured, skipped = {}, {}
    for precision in CPU_CANDIDATES:
        need = 0 if precision == "fp32" else copy_bytes(fp32_model, precision)
        free = free_bytes() if free_bytes else None
        if free is not None and need > 0.8 * free:
            skipped[precision] = f"needs {need / 2**30:.1f} GiB to build, {free / 2**30:.1f} GiB free"
            continue
        model = fp32_model if precision == "fp32" else apply_precision(copy.deepcopy(fp32_model), precision)
        agreement = _agreement(model, ids, reference)  # doubles as the warm-up
        best = min((_turn_timings(model) for _ in range(rounds)), key=lambda t: t[0] + TURN_NEW_TOKENS * t[1])
        measured[precision] = Measurement(*best, agreement)
        del model
        gc.collect()
    return measured, skipped


def pick(measured: dict[str, Measurement]) -> str:
    """Fastest candidate that predicts like fp32; it must beat fp32 clearly, or timing noise would decide."""
    faithful = {p: m for p, m in measured.items() if m.agreement >= MIN_AGREEMENT}
    best = min(faithful, key=lambda p: faithful[p].turn_seconds)  # fp32 always agrees with itself
    return best if faithful[best].turn_seconds < measured["fp32"].turn_seconds / MIN_SPEEDUP else "fp32"


def choose_cpu_precision(fp32_model: nn.Module, tokenizer=None,
                         free_bytes: Callable[[], int] | None = None) -> PrecisionChoice:
    """Fastest faithful CPU precision for this architecture, measured once and remembered on disk.

    The lock makes a second first-load of the same architecture wait for the first measurement and reuse it.
    """
    memo = cache_dir() / "precision_choices.json"
    key = _arch_key(fp32_model)
    with locked(memo):
        known = read_json(memo, {})
        if key not in known:
            measured, skipped = measure_cpu_precisions(fp32_model, probe_ids(tokenizer), free_bytes=free_bytes)
            known[key] = {"best": pick(measured), "measured": {p: asdict(m) for p, m in measured.items()},
                          "skipped": skipped}
            write_json(memo, known)
    entry = known[key]
    return PrecisionChoice(entry["best"], {p: Measurement(**m) for p, m in entry["measured"].items()},
                           entry.get("skipped", {}))
