"""Device choice (CUDA, MPS, CPU), thread count and the optional ZeroGPU wrapper."""
from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable)


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cuda" | "mps" | "cpu"
    name: str
    threads: int

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.kind)

    def describe(self) -> str:
        return f"{self.kind.upper()} ({self.name}, {self.threads} threads)"


def configure_threads(n: int | None = None) -> int:
    """Use every core we were given (os.sched_getaffinity respects container limits)."""
    if n is None:
        env = os.environ.get("LLMPG_THREADS")
        n = int(env) if env else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, n))
    return torch.get_num_threads()


# CPU features that change which runtime or precision is fastest (native bf16, int8 dot products, AMX tiles)
_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve")


@functools.lru_cache(maxsize=1)
def cpu_signature() -> str:
    """This CPU's model and the features that matter for speed: measured choices are cached per signature, so a
    machine with other vector units measures again instead of reusing another machine's answer."""
    import platform

    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags = set(value.split())
                break
    except OSError:  # not Linux: the processor name alone
        pass
    return f"{name}|{','.join(f for f in _FEATURES if f in flags)}"


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX), where bf16 can beat fp32."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # an older or newer torch without these probes
        return "avx512_bf16" in cpu_signature() or "amx_bf16" in cpu_signature()


def detect_device(prefer: str | None = None) -> DeviceInfo:
    """Pick the best available device; `prefer` ("cpu", "cuda", "mps") overrides."""
    threads = torch.get_num_threads()
    if prefer in (None, "cuda") and torch.cuda.is_available():
        return DeviceInfo("cuda", torch.cuda.get_device_name(0), threads)
    if prefer in (None, "mps") and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return DeviceInfo("mps", "Apple GPU", threads)
    import platform

    return DeviceInfo("cpu", platform.processor() or platform.machine(), threads)


def on_gpu(fn: F) -> F:
    """Wrap GPU work with `spaces.GPU` on Hugging Face ZeroGPU Spaces; a no-op elsewhere."""
    if importlib.util.find_spec("spaces") is None:
        return fn
    import spaces  # type: ignore[import-not-found]

    return spaces.GPU(fn)  # type: ignore[no-any-return]
