"""Compressed variants of one fp32 model: half precision, int8 / 4-bit quantization, pruning, low-rank.

Every builder takes the fp32 model and returns a new model (the original is never touched),
plus which share of the parameters it actually compressed. GPT-2 stores its projections as
`Conv1D` (weight transposed), which quantize_dynamic, bitsandbytes and torch pruning would
skip silently; builders that work on linear layers first rewrite Conv1D as an exact nn.Linear.
A variant that cannot run here says why through `unavailable_reason` instead of disappearing.
"""
from __future__ import annotations

import copy
import functools
import importlib.util
import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from core.common.errors import InputError, check_number
from core.common.stopping import StopFlag
from core.models.paths import calibration_text
from core.models.precision import Int8WeightLinear, conv1d_to_linear, int8_weight_only
from core.quantize.activation_aware import WINDOW, FactoredLinear, collect_stats, low_rank, wanda_prune
from core.quantize.healing import HEALING_FILE, HealSettings, adapter_params, heal, healing_text

# bitsandbytes logs on every int8 matmul that CPU float32 inputs are cast to float16: expected here, and noisy.
logging.getLogger("bitsandbytes.autograd._functions").addFilter(lambda record: "inputs will be cast" not in record.msg)
# int8-dynamic: a linear whose output moves more than this (relative) when its input is quantized per tensor keeps
# fp32 activations (int8 weight-only) instead.
MAX_DYNAMIC_ERROR = 0.05

@dataclass(frozen=True)
class CompressionOptions:
    sparsity: float = 0.5  # share of linear weights zeroed by the pruning variants
    cut: float = 0.2  # share of the linear layers' parameters the low-rank variants remove
    calibration_ids: tuple[int, ...] = ()  # tokens of the calibration text (activation-aware variants)
    calibration_name: str = "assets/calibration_text.txt"
    healing_ids: tuple[int, ...] = ()  # tokens of the healing text (the "+lora" variants)
    stop: StopFlag | None = field(default=None, compare=False, repr=False)  # checked between healing steps

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparsity", check_number("Pruning sparsity", self.sparsity, 0.01, 0.99))
        object.__setattr__(self, "cut", check_number("Low-rank cut", self.cut, 0.01, 0.9))


def calibrated(opts: CompressionOptions, tokenizer, text: str | None = None, name: str | None = None,
               max_tokens: int = 2048) -> CompressionOptions:
    """The options with the calibration text's tokens (default: the team's assets/calibration_text.txt)."""
    if text is None:
        text = calibration_text()
    if not text.strip():
        raise InputError("The calibration text is empty: upload a .txt file with some prose in it.")
    ids = tokenizer(text)["input_ids"][:max_tokens]
    return replace(opts, calibration_ids=tuple(ids), calibration_name=name or opts.calibration_name,
                   healing_ids=tuple(tokenizer(healing_text())["input_ids"]))


@dataclass
class BuiltVariant:
    model: nn.Module
    compressed_params: int  # parameters held in compressed modules (or converted to a smaller dtype)
    total_params: int  # parameters of the fp32 model (tied weights counted once)
    notes: list[str] = field(default_factory=list)
    size_bytes: int | None = None  # on disk, when the variant is not a torch state_dict (an ONNX export)

    @property
    def compressed_share(self) -> float:
        return self.compressed_params / self.total_params if self.total_params else 0.0


@dataclass(frozen=True)
class VariantSpec:
    name: str
    description: str
    build: Callable[[nn.Module, CompressionOptions], BuiltVariant]
    needs: Callable[[str], str | None]  # device kind -> reason it cannot run, or None


# ---- helpers ---------------------------------------------------------------------------------
def unique_params(model: nn.Module) -> int:
    """Parameter count with tied tensors (embedding = lm_head) counted once."""
    return sum(p.numel() for p in model.parameters())  # parameters() already deduplicates shared tensors


def block_linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) for every nn.Linear except the output head, which is tied to the embeddings."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear) and child is not head:
                found.append((parent, name, child))
    return found


def _linear_copy(fp32: nn.Module) -> tuple[nn.Module, list[str]]:
    """Deep copy with Conv1D rewritten as nn.Linear, and a note saying so."""
    model = copy.deepcopy(fp32)
    converted = conv1d_to_linear(model)
    return model, [f"{converted} GPT-2 Conv1D layers rewritten as nn.Linear first"] if converted else []


def _count(layers) -> int:
    return sum(layer.weight.numel() + (layer.bias.numel() if layer.bias is not None else 0) for layer in layers)


# ---- builders --------------------------------------------------------------------------------
def _dtype_builder(dtype: torch.dtype) -> Callable[[nn.Module, CompressionOptions], BuiltVariant]:
    def build(fp32: nn.Module, _opts: CompressionOptions) -> BuiltVariant:
        total = unique_params(fp32)
        return BuiltVariant(copy.deepcopy(fp32).to(dtype), total, total)

    return build


def build_fp32(fp32: nn.Module, _opts: CompressionOptions) -> BuiltVariant:
    return BuiltVariant(fp32, 0, unique_params(fp32), ["the reference every other variant is compared with"])


class FullRangeDynamicLinear(torch.ao.nn.quantized.dynamic.Linear):
    """torch's dynamic int8 linear with its activations at the full 8-bit range. torch always asks its kernel for
    7 bits (`reduce_range`), which CPUs without VNNI need, as their u8 x s8 pair sums would overflow int16; where the
    kernel is measured exact at the full range (`full_range_is_exact`) those 7 bits only halve the resolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False).to(x.dtype)


def _dynamic_int8(model: nn.Module, linear_class: type | None) -> nn.Module:
    """Embedding tables to int8 (weight-only, one scale per row) and, with a class, nn.Linear to dynamic int8."""
    from torch.ao.quantization import float_qparams_weight_only_qconfig, per_channel_dynamic_qconfig
    from torch.ao.quantization.quantization_mappings import get_default_dynamic_quant_module_mappings

    spec = {nn.Embedding: float_qparams_weight_only_qconfig}
    mapping = get_default_dynamic_quant_module_mappings()
    if linear_class is not None:
        spec[nn.Linear] = per_channel_dynamic_qconfig
        mapping = mapping | {nn.Linear: linear_class}
    with warnings.catch_warnings():  # torch.ao is deprecated in 2.13 but still the fastest int8 path on CPU
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8, mapping=mapping)


@functools.cache
def full_range_is_exact() -> bool:
    """Whether this CPU's dynamic int8 kernel multiplies 8-bit activations exactly: an input whose pairs of products
    overflow int16 (255 x 127 x 2) must come out right, not saturated."""
    layer = nn.Linear(256, 8, bias=False)
    nn.init.ones_(layer.weight)
    x = torch.ones(4, 256)
    x[:, 0] = 0  # the activation range [0, 1]: every other input quantizes to 255
    quantized = _dynamic_int8(nn.Sequential(layer), FullRangeDynamicLinear)[0]
    with torch.no_grad():
        return torch.allclose(quantized(x), layer(x), rtol=1e-2)


def _fake_quant_per_tensor(x: torch.Tensor, levels: int) -> torch.Tensor:
    """x rounded as the dynamic kernel rounds it: one asymmetric scale for the whole tensor."""
    low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (high - low) / (levels - 1) or 1.0
    zero = round(-low / scale)
    return (torch.clamp(torch.round(x / scale) + zero, 0, levels - 1) - zero) * scale


def _lossy_dynamic_layers(model: nn.Module, ids: torch.Tensor, levels: int) -> list[str]:
    """Names of the linears whose output moves by more than MAX_DYNAMIC_ERROR (relative, the mean over tokens) on the
    calibration text when their input is quantized per tensor: layers fed activation outliers (LLaMA's down_proj)."""
    worst: dict[str, float] = {}
    names = {layer: name for name, layer in model.named_modules() if isinstance(layer, nn.Linear)}

    def hook(layer, inputs, output):
        moved = F.linear(_fake_quant_per_tensor(inputs[0].detach(), levels), layer.weight, layer.bias) - output
        # per token: one token with huge activations sets the scale and would hide that every other token is crushed
        error = float((moved.norm(dim=-1) / output.norm(dim=-1).clamp_min(1e-12)).mean())
        worst[names[layer]] = max(worst.get(names[layer], 0.0), error)

    window = min(WINDOW, getattr(model.config, "max_position_embeddings", WINDOW))  # encoders read fewer positions
    handles = [layer.register_forward_hook(hook) for layer in names]
    try:
        with torch.no_grad():
            for start in range(0, ids.shape[1] - 1, window):
                model(input_ids=ids[:, start:start + window])
    finally:
        for handle in handles:
            handle.remove()
    return [name for name, error in worst.items() if error > MAX_DYNAMIC_ERROR]


def _weight_only_where_lossy(model: nn.Module, opts: CompressionOptions, levels: int) -> list[str]:
    """Swap the lossy linears for int8 weight-only ones (activations not quantized); returns a note saying which."""
    lossy = _lossy_dynamic_layers(model, _calibration(model, opts), levels)
    swapped = []
    for name in lossy:
        parent_name, _, attribute = name.rpartition(".")
        layer = model.get_submodule(name)
        if Int8WeightLinear.supports(layer.in_features):
            setattr(model.get_submodule(parent_name), attribute, Int8WeightLinear(layer.weight, layer.bias))
            swapped.append(attribute)
    if not swapped:
        return []
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(Counter(swapped).items(), key=lambda kv: -kv[1]))
    return [f"{len(swapped)} linears ({kinds}) lost more than {MAX_DYNAMIC_ERROR:.0%} of their output to one activation "
            f"scale per tensor on {len(opts.calibration_ids)} tokens of {opts.calibration_name}: they run int8 "
            "weight-only (activations not quantized)"]


def build_int8_dynamic(fp32: nn.Module, opts: CompressionOptions) -> BuiltVariant:
    """Dynamic int8 linears at the activation range this CPU's kernel computes exactly, except the layers whose
    inputs carry outliers (measured on the calibration text), which keep int8 weights with fp32 activations."""
    model, notes = _linear_copy(fp32)
    compressed = _int8_params(model, lambda _m: True)
    full = full_range_is_exact()
    notes += _weight_only_where_lossy(model, opts, 256 if full else 128)
    model = _dynamic_int8(model, FullRangeDynamicLinear if full else torch.ao.nn.quantized.dynamic.Linear)
    notes.append("activations quantized per tensor at run time, at the full 8 bits (this CPU's int8 kernel was measured "
                 "exact there)" if full else "activations quantized per tensor at run time, at 7 bits (torch's "
                 "reduce_range: this CPU's int8 kernel saturates at the full 8 bits)")
    return BuiltVariant(model, compressed, unique_params(fp32), notes + _tied_note(fp32))


def build_int8_weight(fp32: nn.Module, _opts: CompressionOptions) -> BuiltVariant:
    model, notes = _linear_copy(fp32)
    # The int8 weight-only kernel needs inner sizes in blocks of 32: other linears stay fp32 and don't count.
    compressed = _int8_params(model, lambda m: Int8WeightLinear.supports(m.in_features))
    model = _dynamic_int8(int8_weight_only(model), None)
    return BuiltVariant(model, compressed, unique_params(fp32), notes + _tied_note(fp32) + [
        "int8 weight-only matmul kernel, activations are not quantized"])


def _int8_params(model: nn.Module, linear_kept: Callable[[nn.Linear], bool]) -> int:
    layers = [m for m in model.modules() if type(m) is nn.Embedding or isinstance(m, nn.Linear) and linear_kept(m)]
    return sum({id(p): p.numel() for m in layers for p in m.parameters()}.values())  # tied tables once


def _tied_note(fp32: nn.Module) -> list[str]:
    tied = getattr(getattr(fp32, "config", None), "tie_word_embeddings", False)
    return ["tied embedding and lm_head are stored as two int8 tables"] if tied else []


def _replace_block_linears(model: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> int:
    layers = block_linears(model)
    for parent, name, layer in layers:
        setattr(parent, name, make(layer))
    return _count(layer for _, _, layer in layers)


def _bnb_int8(layer: nn.Linear) -> nn.Module:
    import bitsandbytes as bnb

    new = bnb.nn.Linear8bitLt(layer.in_features, layer.out_features, bias=layer.bias is not None,
                              has_fp16_weights=False, threshold=0.0)
    new.load_state_dict(layer.state_dict())  # Int8Params quantize row-wise when moved / loaded
    return new.to(layer.weight.device)


def _bnb_nf4(layer: nn.Linear) -> nn.Module:
    import bitsandbytes as bnb

    new = bnb.nn.Linear4bit(layer.in_features, layer.out_features, bias=layer.bias is not None,
                            compute_dtype=torch.float32, quant_type="nf4")
    new.weight = bnb.nn.Params4bit(layer.weight.data, requires_grad=False, quant_type="nf4")
    if layer.bias is not None:
        new.bias = nn.Parameter(layer.bias.data.clone(), requires_grad=False)
    return new.to(layer.weight.device)  # Params4bit quantizes on the move


def _bnb_builder(make: Callable[[nn.Linear], nn.Module]) -> Callable[[nn.Module, CompressionOptions], BuiltVariant]:
    def build(fp32: nn.Module, _opts: CompressionOptions) -> BuiltVariant:
        model, notes = _linear_copy(fp32)
        compressed = _replace_block_linears(model, make)
        return BuiltVariant(model, compressed, unique_params(fp32), notes + ["embeddings and lm_head stay fp32"])

    return build


def _torchao_builder(config_name: str) -> Callable[[nn.Module, CompressionOptions], BuiltVariant]:
    def build(fp32: nn.Module, _opts: CompressionOptions) -> BuiltVariant:
        import torchao.quantization as tq

        model, notes = _linear_copy(fp32)
        head = model.get_output_embeddings()
        compressed = _count(layer for _, _, layer in block_linears(model))
        tq.quantize_(model, getattr(tq, config_name)(), filter_fn=lambda m, _fqn: isinstance(m, nn.Linear) and m is not head)
        return BuiltVariant(model, compressed, unique_params(fp32), notes + ["embeddings and lm_head stay fp32"])

    return build


def build_pruned(fp32: nn.Module, opts: CompressionOptions) -> BuiltVariant:
    """Zero the smallest-magnitude weights of each linear layer, made permanent (no masks left)."""
    from torch.nn.utils import prune

    model, notes = _linear_copy(fp32)
    layers = [layer for _, _, layer in block_linears(model)]
    for layer in layers:
        prune.l1_unstructured(layer, "weight", amount=opts.sparsity)
        prune.remove(layer, "weight")
    zeros = sum(int((layer.weight == 0).sum()) for layer in layers)
    weights = sum(layer.weight.numel() for layer in layers)
    notes.append(f"sparsity {zeros / max(weights, 1):.1%} of pruned weights, {zeros / unique_params(fp32):.1%} of the model; "
                 "stored dense, so the file does not shrink")
    return BuiltVariant(model, _count(layers), unique_params(fp32), notes)


def _calibration(fp32: nn.Module, opts: CompressionOptions):
    if not opts.calibration_ids:
        raise InputError("The activation-aware variants need a calibration text.")
    return torch.tensor([opts.calibration_ids])


def _wanda_builder(pattern: str) -> Callable[[nn.Module, CompressionOptions], BuiltVariant]:
    def build(fp32: nn.Module, opts: CompressionOptions) -> BuiltVariant:
        model, notes = _linear_copy(fp32)
        layers = [layer for _, _, layer in block_linears(model)]
        stats = collect_stats(model, layers, _calibration(fp32, opts), gram=False)
        sparsity = 0.5 if pattern == "2:4" else opts.sparsity
        zeroed = wanda_prune(layers, stats, sparsity, pattern)
        weights = sum(layer.weight.numel() for layer in layers)
        notes.append(f"Wanda {pattern} on {len(opts.calibration_ids)} tokens of {opts.calibration_name}: "
                     f"{zeroed / weights:.1%} of pruned weights zeroed; stored dense, so the file does not shrink")
        if pattern == "2:4":
            notes.append(_sparse_kernel_note())
        return BuiltVariant(model, _count(layers), unique_params(fp32), notes)

    return build


def _sparse_kernel_note() -> str:
    """Whether 2:4 sparsity could run faster here (it needs sparse tensor cores)."""
    if torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0):
        return ("this GPU has 2:4 sparse tensor cores (torch.sparse.to_sparse_semi_structured could use them); "
                "measured here stored dense")
    return "no 2:4 sparse kernel on this machine (it needs an NVIDIA GPU from Ampere on): no faster here, only smaller"


def _low_rank_builder(whitened: bool) -> Callable[[nn.Module, CompressionOptions], BuiltVariant]:
    def build(fp32: nn.Module, opts: CompressionOptions) -> BuiltVariant:
        model, notes = _linear_copy(fp32)
        found = block_linears(model)
        stats = collect_stats(model, [layer for _, _, layer in found], _calibration(fp32, opts), gram=True) \
            if whitened else None
        before, after = low_rank(found, opts.cut, stats)
        factored = sum(isinstance(m, FactoredLinear) for m in model.modules())
        how = f"whitened with {len(opts.calibration_ids)} tokens of {opts.calibration_name}" if whitened else "plain SVD"
        notes.append(f"{how}; ranks chosen per layer for a {opts.cut:.0%} cut: {1 - after / before:.1%} of the linear "
                     f"parameters removed, {factored} of {len(found)} layers factored")
        return BuiltVariant(model, before, unique_params(fp32), notes)

    return build


def _healed_builder(compressed: str) -> Callable[[nn.Module, CompressionOptions], BuiltVariant]:
    def build(fp32: nn.Module, opts: CompressionOptions) -> BuiltVariant:
        built = VARIANTS[compressed].build(fp32, opts)
        settings = HealSettings()
        healed, losses = heal(built.model, torch.tensor([opts.healing_ids]), settings, opts.stop)
        tail = losses[-10:]
        built.notes.append(f"healed with LoRA (r {settings.rank}) for {settings.steps} steps on "
                           f"{settings.steps * settings.batch * settings.window:,} tokens of assets/{HEALING_FILE}: "
                           f"loss {losses[0]:.2f} -> {sum(tail) / len(tail):.2f}; {adapter_params(healed):,} adapter "
                           "parameters kept apart from the weights, so zeroed weights stay zero")
        return BuiltVariant(healed, built.compressed_params, built.total_params, built.notes)

    return build


def _onnx_builder(precision: str) -> Callable[[nn.Module, CompressionOptions], BuiltVariant]:
    """The model as the Chat tab's CPU fast path runs it: exported once with onnxruntime-genai, run by ONNX Runtime."""
    def build(fp32: nn.Module, _opts: CompressionOptions) -> BuiltVariant:
        from core.models import onnx_runtime

        folder = Path(getattr(fp32, "name_or_path", "") or ".")
        if not (folder / "config.json").exists():
            raise InputError("the ONNX rows export a model saved in a local folder; this one is only in memory")
        exported = onnx_runtime.export(folder, precision)
        linears = sum(m.weight.numel() for m in fp32.modules() if type(m).__name__ in ("Linear", "Conv1D"))
        return BuiltVariant(onnx_runtime.OnnxCausalLM(onnx_runtime.OnnxModel(exported), fp32.config),
                            linears if precision != "fp32" else 0, unique_params(fp32),
                            [f"onnxruntime-genai export ({' '.join(onnx_runtime.EXPORTS[precision])}), cached; "
                             "int8 activations in its matmuls (accuracy level 4)"], onnx_runtime.onnx_bytes(exported))
    return build


def _onnx_available(device: str) -> str | None:
    from core.models import onnx_runtime

    return "the ONNX rows are the CPU fast path" if device != "cpu" else onnx_runtime.unavailable_reason()


# ---- availability ------------------------------------------------------------------------------
def _always(_device: str) -> str | None:
    return None


def _needs_gpu(_device: str) -> str | None:
    return None if _device == "cuda" else "needs a CUDA GPU: fp16 matrix products on CPU are emulated and very slow"


def _needs_module(module: str, hint: str) -> Callable[[str], str | None]:
    return lambda _device: None if importlib.util.find_spec(module) else f"{module} not installed ({hint})"


def _torchao_int4(device: str) -> str | None:
    if importlib.util.find_spec("torchao") is None:
        return "torchao not installed (pip install torchao)"
    if device != "cuda":
        return "torchao int4 (Int4WeightOnlyConfig) needs the mslk GPU kernels; on CPU it has no packed int4 format"
    return None


VARIANTS: dict[str, VariantSpec] = {spec.name: spec for spec in (
    VariantSpec("fp32", "full precision baseline", build_fp32, _always),
    VariantSpec("bf16", "bfloat16 weights and activations", _dtype_builder(torch.bfloat16), _always),
    VariantSpec("fp16", "float16 weights and activations", _dtype_builder(torch.float16), _needs_gpu),
    # Dynamic int8 also quantizes activations, one scale per tensor: layers fed outlier activations (LLaMA's
    # down_proj) lose the most, so those keep fp32 activations (measured per layer on the calibration text).
    VariantSpec("int8-dynamic", "torch.ao dynamic int8 linears + int8 embeddings; layers fed outliers int8 weight-only",
                build_int8_dynamic, _always),
    VariantSpec("int8-weight", "int8 weights, fp32 activations + int8 embeddings (the Chat tab's int8)",
                build_int8_weight, _always),
    VariantSpec("bnb-int8", "bitsandbytes LLM.int8 linears (slow on CPU)", _bnb_builder(_bnb_int8),
                _needs_module("bitsandbytes", "pip install bitsandbytes")),
    VariantSpec("bnb-nf4", "bitsandbytes 4-bit NF4 linears (slow on CPU)", _bnb_builder(_bnb_nf4),
                _needs_module("bitsandbytes", "pip install bitsandbytes")),
    VariantSpec("torchao-int8", "torchao int8 weight-only linears", _torchao_builder("Int8WeightOnlyConfig"),
                _needs_module("torchao", "pip install torchao")),
    VariantSpec("torchao-int4", "torchao int4 weight-only linears", _torchao_builder("Int4WeightOnlyConfig"), _torchao_int4),
    VariantSpec("onnx-int8", "ONNX Runtime, int8 weights (the Chat tab's CPU fast path)", _onnx_builder("int8"),
                _onnx_available),
    VariantSpec("onnx-int4", "ONNX Runtime, int4 weights", _onnx_builder("int4"), _onnx_available),
    VariantSpec("pruned", "magnitude pruning of linear weights", build_pruned, _always),
    VariantSpec("wanda", "Wanda pruning: |weight| x input activation norm, per output row", _wanda_builder("unstructured"),
                _always),
    VariantSpec("wanda-2:4", "Wanda pruning in the 2:4 pattern (2 of every 4 weights)", _wanda_builder("2:4"), _always),
    VariantSpec("low-rank", "plain SVD of linear layers, ranks from one parameter budget", _low_rank_builder(False),
                _always),
    VariantSpec("svd-llm", "activation-aware SVD (whitened, SVD-LLM), ranks from one parameter budget",
                _low_rank_builder(True), _always),
    VariantSpec("wanda+lora", "Wanda pruning, then healed with LoRA (a few minutes)", _healed_builder("wanda"),
                _always),
    VariantSpec("svd-llm+lora", "SVD-LLM, then healed with LoRA (a few minutes)", _healed_builder("svd-llm"),
                _always),
)}


def unavailable_reason(name: str, device: str) -> str | None:
    return VARIANTS[name].needs(device)


def build_variant(name: str, fp32: nn.Module, opts: CompressionOptions) -> BuiltVariant:
    """The named variant of an fp32 model, in eval mode."""
    built = VARIANTS[name].build(fp32, opts)
    built.model.eval()
    return built


def variant_id(model_id: str, name: str) -> str:
    """Id a variant is registered under, e.g. 'SmolLM2-135M-Instruct [int8-dynamic]'."""
    return f"{model_id.rstrip('/').split('/')[-1]} [{name}]"


def register_variant(manager, base, name: str, opts: CompressionOptions, against_fp32=None):
    """Build a variant of an fp32 LoadedModel and register it with the model manager so every tab can use it, with
    its figures against fp32 (core.models.manager.Fp32Figures) when a comparison measured this very build. The same
    variant with the same options again is the model already registered; other options make a new id ("#2")."""
    import time

    from core.models.manager import LoadedModel, model_nbytes

    if name.startswith("onnx-"):
        raise InputError("The Chat tab already runs this model on ONNX Runtime when an export keeps fp32's quality "
                         "(see the model summary there); pick a PyTorch variant to try it in Chat.")
    opts = opts if opts.calibration_ids else calibrated(opts, base.tokenizer)
    recipe = (base.path, base.precision, name, opts)
    held = manager.held(recipe)
    if held is not None:
        held.against_fp32 = against_fp32 or held.against_fp32  # measured on this very recipe
        return held
    start = time.perf_counter()
    built = build_variant(name, base.model, opts)
    loaded = LoadedModel(variant_id(base.model_id, name), base.task, "memory", base.path, built.model, base.tokenizer,
                         base.device, name, base.is_chat, time.perf_counter() - start, model_nbytes(built.model),
                         against_fp32=against_fp32, recipe=recipe)
    return manager.register(loaded)
