"""The CPU fast path: a causal LM exported once to ONNX (onnxruntime-genai's model builder), run by ONNX Runtime.

Export: `python -m onnxruntime_genai.models.builder` in a child process (it imports the model with
transformers, safetensors only, no remote code) writes `model.onnx` with int8 or int4 weight-only
MatMulNBits kernels and GroupQueryAttention. The result is cached under `$LLMPG_HOME/onnx/`.

Running: our own calls of `onnxruntime.InferenceSession` rather than the package's generator, so the
chat engine gets every step's full logits (the token view, our samplers) and can batch many users
(core.chat.backends.OnnxBackend), and the Quantize tab can measure the export like any other variant
(OnnxCausalLM).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch
from torch import nn

from core.common.errors import PlaygroundError
from core.models.paths import cache_dir

Progress = Callable[[float, str], None]
RUNTIME = "ONNX Runtime"
# model_type values the builder exports (a subset of its list that we have checked or that share llama's layout)
SUPPORTED = {"llama", "mistral", "phi", "phi3", "qwen2", "qwen3", "gemma", "gemma2", "granite", "olmo"}
# Export variants: builder arguments. int8 uses blocks of 64 weights per scale: on SmolLM2 here it decoded about 10 %
# faster than the builder's default of 32 and kept as many of fp32's next tokens (96 %, perplexity +0.7 % vs +1.3 %).
EXPORTS = {"int4": ["-p", "int4"], "int8": ["-p", "int8", "--extra_options", "block_size=64"],
           "int8-b32": ["-p", "int8"], "fp32": ["-p", "fp32"]}
EXPORT_TIMEOUT_S = 1800
_DONE = ".complete"


class OnnxExportError(PlaygroundError):
    """The model could not be exported or loaded for ONNX Runtime; the torch engine serves instead."""


def unavailable_reason(model_type: str | None = None) -> str | None:
    """Why the ONNX path cannot serve this model here, or None when it can."""
    for package in ("onnxruntime", "onnxruntime_genai", "onnx"):
        if importlib.util.find_spec(package) is None:
            return f"the package {package.replace('_', '-')} is not installed"
    if model_type is not None and model_type not in SUPPORTED:
        return f"the ONNX exporter does not handle the '{model_type}' architecture"
    return None


def fingerprint(folder: Path) -> str:
    """Changes when the model's weights or config change (a fine-tuned model saved again, say)."""
    parts = []
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("config.json")):
        stat = path.stat()
        parts.append(f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}")
    return hashlib.sha256("|".join([str(folder.resolve())] + parts).encode()).hexdigest()[:16]


def export_folder(model_folder: Path, precision: str) -> Path:
    options = hashlib.sha256(" ".join(EXPORTS[precision]).encode()).hexdigest()[:6]  # new options: a new export
    return cache_dir() / "onnx" / f"{model_folder.name}-{fingerprint(model_folder)}" / f"{precision}-{options}"


def export(model_folder: Path, precision: str, progress: Progress | None = None) -> Path:
    """The ONNX export of a local safetensors model folder at `precision` (an EXPORTS key), built once and cached."""
    report = progress or (lambda *_: None)
    out = export_folder(model_folder, precision)
    if (out / _DONE).exists():
        return out
    if not list(model_folder.glob("*.safetensors")):
        raise OnnxExportError(f"{model_folder.name} has no safetensors weights to export.")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model_folder), "-o", str(out),
               "-e", "cpu", "-c", str(out.parent / "builder-cache"), *EXPORTS[precision]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # a local folder needs no hub, and must not fetch code
    start = time.monotonic()
    log_path = out.parent / f"export-{precision}.log"  # a file, not a pipe: a full pipe would block the builder
    with open(log_path, "w") as log_file, subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                                            env=env) as child:
        while child.poll() is None:
            elapsed = time.monotonic() - start
            if elapsed > EXPORT_TIMEOUT_S:
                child.kill()
            report(min(0.95, elapsed / 60), f"Exporting {model_folder.name} to ONNX ({precision}, once): "
                                            f"{elapsed:.0f} s")
            time.sleep(0.5)
    log = log_path.read_text(errors="replace")
    shutil.rmtree(out.parent / "builder-cache", ignore_errors=True)
    if child.returncode != 0 or not (out / "model.onnx").exists():
        shutil.rmtree(out, ignore_errors=True)
        tail = " ".join(log.strip().splitlines()[-3:])[-400:]
        raise OnnxExportError(f"ONNX export ({precision}) failed: {tail or f'exit code {child.returncode}'}")
    (out / _DONE).write_text("ok")
    report(1.0, f"ONNX export ({precision}) ready")
    return out


def onnx_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("model.onnx*"))


# ---- running -------------------------------------------------------------------------------------------------------
class OnnxModel:
    """One exported model in an InferenceSession, with the names and shapes of its KV-cache inputs."""

    def __init__(self, folder: Path, threads: int | None = None, spinning: bool = True):
        """`threads`: intra-op threads (None: as many as PyTorch uses); `spinning`: whether they busy-wait for the
        next run (fast to wake, but a spinning thread holds a core the sampler may need)."""
        import onnxruntime as ort

        config = json.loads((folder / "genai_config.json").read_text())["model"]
        decoder = config["decoder"]
        self.folder = folder
        self.layers, self.kv_heads, self.head_size = (decoder["num_hidden_layers"], decoder["num_key_value_heads"],
                                                      decoder["head_size"])
        self.context = int(config.get("context_length") or 2048)
        self.past_names = [decoder["inputs"][f"past_{kind}_names"] % layer
                           for layer in range(self.layers) for kind in ("key", "value")]
        self.present_names = [decoder["outputs"][f"present_{kind}_names"] % layer
                              for layer in range(self.layers) for kind in ("key", "value")]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        kv_type = next(i.type for i in self.session.get_inputs() if i.name == self.past_names[0])
        self.kv_dtype = np.float16 if "float16" in kv_type else np.float32
        self._ort = ort

    def ort_value(self, array: np.ndarray):
        """An OrtValue over a (contiguous) array, to bind as a KV-cache input."""
        return self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))

    def empty_past(self, rows: int = 1) -> list:
        shape = (rows, self.kv_heads, 0, self.head_size)
        return [self.ort_value(np.zeros(shape, self.kv_dtype)) for _ in self.past_names]

    def run(self, ids: np.ndarray, mask: np.ndarray, past: list) -> tuple[np.ndarray, list]:
        """One forward pass: logits (rows, positions, vocab) and the new KV cache as OrtValues (no copy)."""
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", ids.astype(np.int64, copy=False))
        binding.bind_cpu_input("attention_mask", mask.astype(np.int64, copy=False))
        for name, value in zip(self.past_names, past):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits")
        for name in self.present_names:
            binding.bind_output(name)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        return outputs[0].numpy(), outputs[1:]

    def run_shared(self, ids: np.ndarray, mask: np.ndarray, cache: list) -> np.ndarray:
        """One forward pass whose KV cache stays in place: each OrtValue in `cache` (rows, kv_heads, columns,
        head_size) is bound as both past and present, and attention writes each row's new positions into it
        (at the row's length, which it reads from the mask's sum). Returns the logits (rows, positions, vocab)."""
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", ids.astype(np.int64, copy=False))
        binding.bind_cpu_input("attention_mask", mask.astype(np.int64, copy=False))
        binding.bind_output("logits")  # first: outputs come back in the order they were bound
        for past, present, value in zip(self.past_names, self.present_names, cache):
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy()

    def prefill(self, ids: list[int], keep_all: bool = False) -> tuple[np.ndarray, list]:
        logits, present = self.run(np.array([ids]), np.ones((1, len(ids))), self.empty_past())
        return (logits[0] if keep_all else logits[0, -1]), present


class OnnxCausalLM(nn.Module):
    """The exported model behind the small part of the transformers interface the Quantize tab measures with:
    `model(input_ids, past_key_values=..., use_cache=True)` returning `.logits` and `.past_key_values`."""

    def __init__(self, model: OnnxModel, config):
        super().__init__()
        self.onnx, self.config = model, config
        self.device_marker = nn.Parameter(torch.zeros(1), requires_grad=False)  # callers ask next(parameters()).device

    def forward(self, input_ids: torch.Tensor, past_key_values=None, use_cache: bool = True, **_ignored):
        ids = input_ids.cpu().numpy()
        past, width = past_key_values or (self.onnx.empty_past(ids.shape[0]), 0)
        logits, present = self.onnx.run(ids, np.ones((ids.shape[0], width + ids.shape[1])), past)
        return SimpleNamespace(logits=torch.from_numpy(np.array(logits, dtype=np.float32)),
                               past_key_values=(present, width + ids.shape[1]))
