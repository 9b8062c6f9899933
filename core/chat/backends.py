"""What runs a chat model's forward passes for the engine: PyTorch (any model, any device) or ONNX Runtime (CPU).

A backend reads a prompt (`prefill`) and then decodes many sequences together in a `Batch`: each step
feeds one token per sequence and returns each sequence's next-token logits. Sequences join and leave
between steps (continuous batching), so a new user does not wait for the others' replies to finish.
Sampling is not done here: the engine samples every request from these raw logits with its own settings.
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Hashable

import numpy as np
import torch
import torch.nn.functional as F

from core.models.onnx_runtime import RUNTIME as ONNX_RUNTIME
from core.models.onnx_runtime import OnnxModel


@dataclass
class Sequence:
    """One sequence's KV cache outside a batch, just after its prompt was read."""

    cache: Any
    length: int  # tokens in the cache


class Batch(ABC):
    """Sequences that decode together; joins and leaves take effect at the next step."""

    def __init__(self) -> None:
        self.order: list[Hashable] = []  # row order of the merged cache
        self.lengths: dict[Hashable, int] = {}
        self._joins: list[tuple[Hashable, Sequence]] = []
        self._leaves: set[Hashable] = set()

    def join(self, key: Hashable, sequence: Sequence) -> None:
        self._joins.append((key, sequence))

    def leave(self, key: Hashable) -> None:
        if key in self.lengths:
            self._leaves.add(key)
        self._joins = [(k, s) for k, s in self._joins if k != key]

    def __len__(self) -> int:
        return len(self.order) + len(self._joins) - len(self._leaves)

    def step(self, tokens: dict[Hashable, int]) -> dict[Hashable, torch.Tensor]:
        """Feed each sequence its next token; returns each sequence's next-token logits (float32, on the CPU)."""
        if self._leaves:
            keep = [i for i, key in enumerate(self.order) if key not in self._leaves]
            self.order = [self.order[i] for i in keep]
            self.lengths = {key: self.lengths[key] for key in self.order}
            self._leaves.clear()
            self._remove_rows(keep)
        if self._joins:
            for key, sequence in self._joins:
                self.order.append(key)
                self.lengths[key] = sequence.length
            joins, self._joins = [s for _, s in self._joins], []
            self._add_rows(joins)
        if not self.order:
            return {}
        logits = self._forward([tokens[key] for key in self.order], [self.lengths[key] for key in self.order])
        for key in self.order:
            self.lengths[key] += 1
        return dict(zip(self.order, logits))

    @abstractmethod
    def _remove_rows(self, keep: list[int]) -> None:
        """Keep only these rows of the merged cache (`order` and `lengths` already describe what is kept)."""

    @abstractmethod
    def _add_rows(self, sequences: list[Sequence]) -> None:
        """Append these sequences' caches as new rows (`order` and `lengths` already include them)."""

    @abstractmethod
    def _forward(self, tokens: list[int], lengths: list[int]) -> torch.Tensor:
        """One decode step for every row; returns logits of shape (rows, vocab)."""


@dataclass
class Backend(ABC):
    runtime: str  # what users are told runs the model, e.g. "PyTorch" or "ONNX Runtime"
    precision: str
    device: str
    context: int  # positions the model can attend to
    max_batch: int = 16
    notes: list[str] = field(default_factory=list)

    @abstractmethod
    def prefill(self, ids: list[int]) -> tuple[torch.Tensor, Sequence]:
        """Read a prompt: the next-token logits after it (float32, CPU) and its cache."""

    @abstractmethod
    def new_batch(self) -> Batch:
        ...

    @abstractmethod
    def full_logits(self, ids: list[int]) -> torch.Tensor:
        """Logits at every position of `ids` (seq, vocab): for perplexity and agreement with fp32."""

    def describe(self) -> str:
        return f"{self.runtime} · {self.precision} on {self.device}"


# ---- PyTorch -------------------------------------------------------------------------------------------------------
def _plain_dynamic_cache(cache) -> bool:
    """Batching merges caches layer by layer; sliding-window and other special layers are served one at a time."""
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))


class TorchBatch(Batch):
    """Rows are left-padded to a common width: an attention mask hides the padding, position ids count real tokens."""

    def __init__(self, backend: TorchBackend):
        super().__init__()
        self.backend = backend
        self.cache = None  # a DynamicCache holding every row
        self.width = 0

    def _layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(layer.keys, layer.values) for layer in self.cache.layers] if self.cache is not None else []

    def _remove_rows(self, keep: list[int]) -> None:
        if not keep:
            self.cache, self.width = None, 0
            return
        rows = torch.tensor(keep, device=self.backend.torch_device)
        self._rebuild([(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self._layers()], self.width)

    def _add_rows(self, sequences: list[Sequence]) -> None:
        width = max([self.width] + [s.length for s in sequences])
        parts = [self._layers()] if self.cache is not None else []
        parts += [[(layer.keys, layer.values) for layer in s.cache.layers] for s in sequences]
        layers = [(torch.cat([F.pad(k, (0, 0, width - k.shape[2], 0)) for k, _ in per_layer]),
                   torch.cat([F.pad(v, (0, 0, width - v.shape[2], 0)) for _, v in per_layer]))
                  for per_layer in zip(*parts)]
        self._rebuild(layers, width)

    def _rebuild(self, layers, width: int) -> None:
        """A fresh cache from these tensors, without the columns that are padding in every row."""
        from transformers import DynamicCache

        unused = width - max(self.lengths[key] for key in self.order)
        if unused > 0:
            layers = [(k[:, :, unused:], v[:, :, unused:]) for k, v in layers]
            width -= unused
        self.cache, self.width = DynamicCache(ddp_cache_data=layers), width

    @torch.inference_mode()
    def _forward(self, tokens: list[int], lengths: list[int]) -> torch.Tensor:
        device = self.backend.torch_device
        ids = torch.tensor([[t] for t in tokens], device=device)
        kwargs: dict[str, Any] = {}
        if len(set(lengths)) > 1 or self.width != lengths[0]:  # padding somewhere: mask it, count real positions
            mask = torch.zeros((len(tokens), self.width + 1), dtype=torch.long, device=device)
            for row, length in enumerate(lengths):
                mask[row, self.width - length:] = 1
            kwargs = {"attention_mask": mask, "position_ids": torch.tensor([[n] for n in lengths], device=device)}
        out = self.backend.model(input_ids=ids, past_key_values=self.cache, use_cache=True, **kwargs)
        self.cache, self.width = out.past_key_values, self.width + 1
        return out.logits[:, -1, :].float().cpu()


class TorchBackend(Backend):
    """Any transformers causal LM, on the device and precision the model manager loaded it with."""

    def __init__(self, model, precision: str, device: str, context: int, max_batch: int = 16):
        super().__init__("PyTorch", precision, device, context, max_batch)
        self.model = model
        self.torch_device = next(model.parameters()).device
        self._keep_one = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}

    @torch.inference_mode()
    def prefill(self, ids: list[int]) -> tuple[torch.Tensor, Sequence]:
        out = self.model(input_ids=torch.tensor([ids], device=self.torch_device), use_cache=True, **self._keep_one)
        if self.max_batch > 1 and not _plain_dynamic_cache(out.past_key_values):
            self.max_batch = 1
            self.notes.append("this model's cache layout is served one request at a time (no batching)")
        return out.logits[0, -1].float().cpu(), Sequence(out.past_key_values, len(ids))

    def new_batch(self) -> Batch:
        return TorchBatch(self)

    @torch.inference_mode()
    def full_logits(self, ids: list[int]) -> torch.Tensor:
        return self.model(input_ids=torch.tensor([ids], device=self.torch_device)).logits[0].float().cpu()


# ---- ONNX Runtime --------------------------------------------------------------------------------------------------
class OnnxBatch(Batch):
    """Rows are right-padded: row i's real tokens are the first lengths[i] positions of the cache."""

    def __init__(self, model: OnnxModel):
        super().__init__()
        self.model = model
        self.past: list | None = None  # OrtValues, one per layer and kind, (rows, kv_heads, width, head_size)

    def _arrays(self) -> list[np.ndarray]:
        return [value.numpy() for value in self.past] if self.past is not None else []

    def _store(self, arrays: list[np.ndarray]) -> None:
        width = max(self.lengths[key] for key in self.order)  # drop columns no row uses any more
        self.past = [self.model.ort_value(a[:, :, :width]) for a in arrays]

    def _remove_rows(self, keep: list[int]) -> None:
        if not keep:
            self.past = None
            return
        self._store([a[keep] for a in self._arrays()])

    def _add_rows(self, sequences: list[Sequence]) -> None:
        width = max(self.lengths[key] for key in self.order)
        pad = lambda a: np.pad(a, ((0, 0), (0, 0), (0, width - a.shape[2]), (0, 0)))  # noqa: E731
        parts = [self._arrays()] if self.past is not None else []
        parts += [[value.numpy() for value in s.cache] for s in sequences]
        self._store([np.concatenate([pad(a) for a in per_layer]) for per_layer in zip(*parts)])

    def _forward(self, tokens: list[int], lengths: list[int]) -> torch.Tensor:
        width = self.past[0].shape()[2]
        mask = np.zeros((len(tokens), width + 1), np.int64)
        for row, length in enumerate(lengths):
            mask[row, : length + 1] = 1  # the attention reads each row's length from this sum
        logits, self.past = self.model.run(np.array([[t] for t in tokens]), mask, self.past)
        return torch.from_numpy(np.ascontiguousarray(logits[:, -1, :], dtype=np.float32))


class OnnxBackend(Backend):
    def __init__(self, model: OnnxModel, precision: str, max_batch: int = 16):
        super().__init__(ONNX_RUNTIME, precision, "cpu", model.context, max_batch)
        self.model = model

    def prefill(self, ids: list[int]) -> tuple[torch.Tensor, Sequence]:
        logits, present = self.model.prefill(ids)
        return torch.from_numpy(np.array(logits, dtype=np.float32)), Sequence(present, len(ids))

    def new_batch(self) -> Batch:
        return OnnxBatch(self.model)

    def full_logits(self, ids: list[int]) -> torch.Tensor:
        return torch.from_numpy(np.array(self.model.prefill(ids, keep_all=True)[0], dtype=np.float32))
