"""What runs a chat model's forward passes for the engine: PyTorch (any model, any device) or ONNX Runtime (CPU).

A backend reads prompts (`read`: several whole prompts in one batched pass; `read_more`: the next chunk of one long
prompt) and keeps the running requests' KV caches in a `KVStore`: one row per request, kept in place between steps.
A decode step writes each row's new key and value at that row's own length (rows are right-padded) and attends
over the columns in use, so a step costs the same at any conversation length apart from attention itself. A row
that joins is copied in once from where its prompt was read; a row that leaves is filled by moving the last row into
its place; when a longer row needs more columns the store doubles them (a whole copy, but a rare one). Sampling is
not done here: the engine samples every row from these raw logits.
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Hashable

import numpy as np
import torch

from core.models.onnx_runtime import RUNTIME as ONNX_RUNTIME
from core.models.onnx_runtime import OnnxModel

INITIAL_COLUMNS = 256


def _doubled(have: int, need: int, start: int) -> int:
    size = max(have, start)
    while size < need:
        size *= 2
    return size


@dataclass
class Prefilled:
    """A prompt (or its first part) read outside the store: its KV cache, the row it has there, its length."""

    cache: Any
    length: int
    row: int = 0


class KVStore(ABC):
    """The running requests' KV caches, one row each, in place. `keys[i]` owns row i and has `lengths[i]` tokens."""

    def __init__(self, rows: int) -> None:
        self.keys: list[Hashable] = []
        self.lengths: list[int] = []
        self.rows, self.columns = rows, 0  # allocated

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: Hashable, prefilled: Prefilled) -> None:
        """A request whose prompt was read joins: its cache is copied into the next free row."""
        self._reserve(len(self.keys) + 1, prefilled.length + 1)
        self._copy_in(len(self.keys), prefilled)
        self.keys.append(key)
        self.lengths.append(prefilled.length)

    def remove(self, key: Hashable) -> None:
        """A request leaves: the last row moves into its place (one row copied, not the store)."""
        row, last = self.keys.index(key), len(self.keys) - 1
        if row != last:
            self._move(last, row, self.lengths[last])
            self.keys[row], self.lengths[row] = self.keys[last], self.lengths[last]
        self.keys.pop()
        self.lengths.pop()

    def decode(self, tokens: list[int]) -> torch.Tensor:
        """One step: token i goes to row i (in `keys` order); returns float32 logits (rows, vocab) on the CPU."""
        self._reserve(len(self.keys), max(self.lengths) + 1)
        logits = self._forward(tokens)
        self.lengths = [n + 1 for n in self.lengths]
        return logits

    def clear(self) -> None:
        self.keys, self.lengths = [], []

    def _reserve(self, rows: int, columns: int) -> None:
        if rows > self.rows or columns > self.columns:
            self._grow(max(rows, self.rows), _doubled(self.columns, columns, INITIAL_COLUMNS))

    def mask(self) -> np.ndarray:
        """(rows, width + 1): row i attends to its own tokens and the one being fed (right padding)."""
        lengths = np.array(self.lengths)
        return (np.arange(lengths.max() + 1)[None, :] <= lengths[:, None]).astype(np.int64)

    @abstractmethod
    def _grow(self, rows: int, columns: int) -> None:
        """Reallocate to at least this many rows and columns, keeping what is stored."""

    @abstractmethod
    def _copy_in(self, row: int, prefilled: Prefilled) -> None:
        """Copy a prefilled cache's first `prefilled.length` positions into `row`."""

    @abstractmethod
    def _move(self, source: int, target: int, length: int) -> None:
        """Copy row `source`'s first `length` positions to row `target`."""

    @abstractmethod
    def _forward(self, tokens: list[int]) -> torch.Tensor:
        ...


@dataclass
class Backend(ABC):
    runtime: str  # what users are told runs the model, e.g. "PyTorch" or "ONNX Runtime"
    precision: str
    device: str
    context: int  # positions the model can attend to
    max_batch: int = 16
    notes: list[str] = field(default_factory=list)

    @abstractmethod
    def read(self, prompts: list[list[int]]) -> tuple[torch.Tensor, list[Prefilled]]:
        """Read whole prompts in one pass: each one's next-token logits (rows, vocab; float32, CPU) and cache."""

    @abstractmethod
    def read_more(self, prefilled: Prefilled | None, ids: list[int], total: int) -> tuple[torch.Tensor, Prefilled]:
        """Read the next `ids` of one prompt of `total` tokens after what `prefilled` holds (None: the first chunk):
        the logits after the last of them (vocab,) and the cache so far."""

    @abstractmethod
    def new_store(self) -> KVStore:
        ...

    @abstractmethod
    def full_logits(self, ids: list[int]) -> torch.Tensor:
        """Logits at every position of `ids` (seq, vocab): for perplexity and agreement with fp32."""

    def describe(self) -> str:
        return f"{self.runtime} · {self.precision} on {self.device}"


# ---- PyTorch -------------------------------------------------------------------------------------------------------
def _plain_dynamic_cache(cache) -> bool:
    """Rows are stored layer by layer as plain key/value tensors; sliding-window and other special cache layers are
    served one request at a time in the model's own cache."""
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))


def _slot_layer_class():
    """A transformers cache layer over one layer of a TorchStore (defined on first use: transformers loads lazily)."""
    from transformers.cache_utils import DynamicLayer

    class SlotLayer(DynamicLayer):
        """Writes each row's new key and value at that row's length and hands attention the columns in use."""

        def __init__(self, store: TorchStore, index: int):
            super().__init__()
            self.store, self.index, self.is_initialized = store, index, True

        def update(self, key_states, value_states, *args, **kwargs):
            keys, values = self.store.layers[self.index]
            n, width = len(self.store.keys), self.store.width
            rows, columns = self.store.step_rows, self.store.step_columns
            keys[rows, :, columns] = key_states[:, :, 0]
            values[rows, :, columns] = value_states[:, :, 0]
            return keys[:n, :, :width + 1], values[:n, :, :width + 1]

        def get_seq_length(self) -> int:
            return self.store.width

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.store.width + query_length, 0

    return SlotLayer


class TorchStore(KVStore):
    def __init__(self, backend: TorchBackend):
        super().__init__(0)
        self.backend = backend
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.width = 0  # during a step: the widest row's length
        self.step_rows = self.step_columns = None
        self._cache = None

    def _grow(self, rows: int, columns: int) -> None:
        rows = min(_doubled(self.rows, rows, 4), max(self.backend.max_batch, rows))
        old, self.layers = self.layers, []
        heads, head_size, dtype = self.backend.kv_shape
        for keys, values in old or [(None, None)] * self.backend.layer_count:
            new = [torch.zeros((rows, heads, columns, head_size), dtype=dtype, device=self.backend.torch_device)
                   for _ in range(2)]
            if keys is not None:
                new[0][:self.rows, :, :self.columns] = keys
                new[1][:self.rows, :, :self.columns] = values
            self.layers.append((new[0], new[1]))
        self.rows, self.columns = rows, columns
        SlotLayer = _slot_layer_class()
        from transformers.cache_utils import Cache

        self._cache = Cache(layers=[SlotLayer(self, i) for i in range(len(self.layers))])

    def _copy_in(self, row: int, prefilled: Prefilled) -> None:
        for (keys, values), layer in zip(self.layers, prefilled.cache.layers):
            keys[row, :, :prefilled.length] = layer.keys[prefilled.row, :, :prefilled.length]
            values[row, :, :prefilled.length] = layer.values[prefilled.row, :, :prefilled.length]

    def _move(self, source: int, target: int, length: int) -> None:
        for keys, values in self.layers:
            keys[target, :, :length] = keys[source, :, :length]
            values[target, :, :length] = values[source, :, :length]

    @torch.inference_mode()
    def _forward(self, tokens: list[int]) -> torch.Tensor:
        device = self.backend.torch_device
        lengths = torch.tensor(self.lengths, device=device)
        self.width = int(lengths.max())
        self.step_rows, self.step_columns = torch.arange(len(tokens), device=device), lengths
        mask = torch.from_numpy(self.mask()).to(device)
        out = self.backend.model(input_ids=torch.tensor([[t] for t in tokens], device=device), attention_mask=mask,
                                 position_ids=lengths[:, None], past_key_values=self._cache, use_cache=True)
        return out.logits[:, -1, :].float().cpu()


class OwnCacheStore(KVStore):
    """One request at a time in the model's own cache object: for cache layouts the slot store cannot hold."""

    def __init__(self, backend: TorchBackend):
        super().__init__(1)
        self.backend, self.cache = backend, None

    def _grow(self, rows: int, columns: int) -> None:
        if rows > 1:
            raise RuntimeError("this model's cache layout serves one request at a time")
        self.columns = columns

    def _copy_in(self, row: int, prefilled: Prefilled) -> None:
        self.cache = prefilled.cache

    def _move(self, source: int, target: int, length: int) -> None:
        raise RuntimeError("one row only")

    @torch.inference_mode()
    def _forward(self, tokens: list[int]) -> torch.Tensor:
        device = self.backend.torch_device
        out = self.backend.model(input_ids=torch.tensor([tokens], device=device), past_key_values=self.cache,
                                 use_cache=True)
        self.cache = out.past_key_values
        return out.logits[:, -1, :].float().cpu()


class TorchBackend(Backend):
    """Any transformers causal LM, on the device and precision the model manager loaded it with."""

    def __init__(self, model, precision: str, device: str, context: int, max_batch: int = 16):
        super().__init__("PyTorch", precision, device, context, max_batch)
        self.model = model
        self.torch_device = next(model.parameters()).device
        self._keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._learn_layout()

    @torch.inference_mode()
    def _learn_layout(self) -> None:
        """The cache's shape, from reading one token: plain layers batch in a TorchStore, others one at a time."""
        cache = self.model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=self.torch_device),
                           use_cache=True).past_key_values
        self.own_cache = not _plain_dynamic_cache(cache)
        if self.own_cache:
            self.max_batch = 1
            self.notes.append("this model's cache layout is served one request at a time (no batching)")
        first = cache.layers[0].keys
        self.kv_shape, self.layer_count = (first.shape[1], first.shape[3], first.dtype), len(cache.layers)

    @torch.inference_mode()
    def read(self, prompts: list[list[int]]) -> tuple[torch.Tensor, list[Prefilled]]:
        if self.own_cache and len(prompts) > 1:
            raise RuntimeError("this model reads one prompt at a time")
        lengths = [len(p) for p in prompts]
        width = max(lengths)
        ids = torch.tensor([p + [0] * (width - len(p)) for p in prompts], device=self.torch_device)
        mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long().to(self.torch_device)
        last = torch.tensor(lengths) - 1
        keep = {"logits_to_keep": torch.unique(last).to(self.torch_device)} if self._keep else {}
        out = self.model(input_ids=ids, attention_mask=mask, use_cache=True, **keep)
        kept = torch.unique(last) if self._keep else torch.arange(width)
        columns = torch.searchsorted(kept, last)
        logits = out.logits[torch.arange(len(prompts)), columns.to(self.torch_device)].float().cpu()
        return logits, [Prefilled(out.past_key_values, n, row) for row, n in enumerate(lengths)]

    @torch.inference_mode()
    def read_more(self, prefilled: Prefilled | None, ids: list[int], total: int) -> tuple[torch.Tensor, Prefilled]:
        if prefilled is None:
            logits, [first] = self.read([ids])
            return logits[0], first
        keep = {"logits_to_keep": 1} if self._keep else {}
        out = self.model(input_ids=torch.tensor([ids], device=self.torch_device), past_key_values=prefilled.cache,
                         use_cache=True, **keep)
        return out.logits[0, -1].float().cpu(), Prefilled(out.past_key_values, prefilled.length + len(ids))

    def new_store(self) -> KVStore:
        return OwnCacheStore(self) if self.own_cache else TorchStore(self)

    @torch.inference_mode()
    def full_logits(self, ids: list[int]) -> torch.Tensor:
        return self.model(input_ids=torch.tensor([ids], device=self.torch_device)).logits[0].float().cpu()


# ---- ONNX Runtime --------------------------------------------------------------------------------------------------
class OnnxStore(KVStore):
    """NumPy buffers, one per layer and kind (rows, kv_heads, columns, head_size), bound as both the past and the
    present of each run: the exported GroupQueryAttention writes the new position of each row in place, as
    onnxruntime-genai's past-present shared buffer does."""

    def __init__(self, model: OnnxModel, max_batch: int):
        super().__init__(0)
        self.model, self.max_batch = model, max_batch
        self.buffers: list[np.ndarray] = []
        self._views: dict[int, list] = {}  # rows in use -> OrtValues over the buffers' first rows

    def _grow(self, rows: int, columns: int) -> None:
        rows = min(_doubled(self.rows, rows, 4), max(self.max_batch, rows))
        old = self.buffers
        self.buffers = [np.zeros((rows, self.model.kv_heads, columns, self.model.head_size), self.model.kv_dtype)
                        for _ in self.model.past_names]
        for new, buffer in zip(self.buffers, old):
            new[:self.rows, :, :self.columns] = buffer
        self.rows, self.columns, self._views = rows, columns, {}

    def _copy_in(self, row: int, prefilled: Prefilled) -> None:
        for buffer, part in zip(self.buffers, prefilled.cache):
            buffer[row, :, :prefilled.length] = part[prefilled.row, :, :prefilled.length]

    def _move(self, source: int, target: int, length: int) -> None:
        for buffer in self.buffers:
            buffer[target, :, :length] = buffer[source, :, :length]

    def _forward(self, tokens: list[int]) -> torch.Tensor:
        n = len(tokens)
        if n not in self._views:
            self._views[n] = [self.model.ort_value(buffer[:n]) for buffer in self.buffers]
        logits = self.model.run_shared(np.array([[t] for t in tokens]), self.mask(), self._views[n])
        return torch.from_numpy(logits[:, -1, :])


class OnnxBackend(Backend):
    def __init__(self, model: OnnxModel, precision: str, max_batch: int = 16):
        super().__init__(ONNX_RUNTIME, precision, "cpu", model.context, max_batch)
        self.model = model

    def _buffers(self, rows: int, columns: int) -> list[np.ndarray]:
        return [np.zeros((rows, self.model.kv_heads, columns, self.model.head_size), self.model.kv_dtype)
                for _ in self.model.past_names]

    def read(self, prompts: list[list[int]]) -> tuple[torch.Tensor, list[Prefilled]]:
        lengths = [len(p) for p in prompts]
        width = max(lengths)
        ids = np.array([p + [0] * (width - len(p)) for p in prompts])
        mask = (np.arange(width)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
        buffers = self._buffers(len(prompts), width)
        logits = self.model.run_shared(ids, mask, [self.model.ort_value(b) for b in buffers])
        last = logits[np.arange(len(prompts)), np.array(lengths) - 1]
        return torch.from_numpy(np.ascontiguousarray(last)), [Prefilled(buffers, n, row)
                                                              for row, n in enumerate(lengths)]

    def read_more(self, prefilled: Prefilled | None, ids: list[int], total: int) -> tuple[torch.Tensor, Prefilled]:
        if prefilled is None:
            prefilled = Prefilled(self._buffers(1, total), 0)
        length = prefilled.length + len(ids)
        logits = self.model.run_shared(np.array([ids]), np.ones((1, length), np.int64),
                                       [self.model.ort_value(b) for b in prefilled.cache])
        return torch.from_numpy(np.ascontiguousarray(logits[0, -1])), Prefilled(prefilled.cache, length)

    def new_store(self) -> KVStore:
        return OnnxStore(self.model, self.max_batch)

    def full_logits(self, ids: list[int]) -> torch.Tensor:
        return torch.from_numpy(np.array(self.model.prefill(ids, keep_all=True)[0], dtype=np.float32))
