"""Device choice (CUDA, MPS, CPU), thread count and the optional ZeroGPU wrapper."""
from __future__ import annotations

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
