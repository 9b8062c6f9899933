"""One shared cache of loaded models for every tab and user.

A model is loaded once per (id, task, precision, device, attention) key, with a lock per key
so two users asking for the same model wait for one load, and least-recently-used models are
evicted when the cache would pass its memory budget. Loading resolves an id in this order:
local folder, offline package, Hugging Face Hub; weights are read as safetensors only and
remote code runs only when the caller says so for that load.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from core.common.errors import PlaygroundError
from core.models.device import DeviceInfo, detect_device
from core.models.offline import OFFLINE_MODELS, offline_folder
from core.models.precision import Measurement, apply_precision, choose_cpu_precision, default_precision, load_dtype
from core.models.registry import CAUSAL_LM, ENCODER, TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION, ZERO_SHOT, find_preset

Progress = Callable[[float, str], None]


class ModelLoadError(PlaygroundError):
    """A model could not be had; the message is written for the person who asked for it."""


@dataclass(frozen=True)
class Resolved:
    model_id: str
    path: str  # local folder or hub id handed to from_pretrained
    source: str  # "local folder" | "offline package" | "hub"


@dataclass(frozen=True)
class Fp32Figures:
    """A variant's quality against its fp32 model, measured where the variant was made (the Quantize tab's run), so
    every tab that serves the variant can show those figures instead of comparing the variant with itself."""

    agreement: float  # share of next tokens equal to fp32's, teacher forced on the evaluation text
    perplexity: float
    fp32_perplexity: float
    tokens: int  # evaluation tokens both models were scored on
    text: str  # the evaluation text's name
    measured_by: str  # the tab that measured them


@dataclass
class LoadedModel:
    model_id: str
    task: str
    source: str
    path: str
    model: Any
    tokenizer: Any
    device: str
    precision: str
    is_chat: bool
    load_seconds: float
    nbytes: int
    precision_measured: dict[str, Measurement] = field(default_factory=dict)  # CPU auto choice: what it was based on
    precision_skipped: dict[str, str] = field(default_factory=dict)  # candidates not measured, and why (memory)
    against_fp32: Fp32Figures | None = None  # an in-memory variant's figures from where it was made
    recipe: Any = None  # an in-memory model's inputs (base, variant, options): the same recipe makes the same model

    @property
    def family(self) -> str:
        return getattr(self.model.config, "model_type", "unknown")

    def describe(self) -> str:
        return (f"{self.model_id} · {self.family} · {self.precision} on {self.device} · "
                f"{self.nbytes / 2**20:,.0f} MiB · from {self.source} in {self.load_seconds:.1f}s")


def _auto_class(task: str):
    import transformers as tf

    return {
        CAUSAL_LM: tf.AutoModelForCausalLM,
        TEXT_CLASSIFICATION: tf.AutoModelForSequenceClassification,
        ZERO_SHOT: tf.AutoModelForSequenceClassification,
        TOKEN_CLASSIFICATION: tf.AutoModelForTokenClassification,
        ENCODER: tf.AutoModel,
    }[task]


def load_weights(task: str, path: str, kwargs: dict):
    """The model at `path` for `task`; classifiers fine-tuned here with a custom head load through our own class."""
    from core.models.heads import PooledClassifier, has_custom_head

    if task == TEXT_CLASSIFICATION and has_custom_head(path):
        return PooledClassifier.from_folder(path, **{k: v for k, v in kwargs.items() if k != "trust_remote_code"})
    return _auto_class(task).from_pretrained(path, **kwargs)


def model_nbytes(model: torch.nn.Module) -> int:
    """Bytes held by weights and buffers, counting the packed weights of dynamic-quantized layers."""
    total = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    for module in model.modules():
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            # from the shape: weight() would unpack an fp16 pack into a whole fp32 copy just to be counted
            packed_bytes = 2 if module._packed_params.dtype == torch.float16 else 1  # fp16 or qint8
            bias = module.bias()
            total += module.in_features * module.out_features * packed_bytes
            total += 0 if bias is None else bias.numel() * bias.element_size()
    return total


def available_memory_bytes(device: DeviceInfo) -> int:
    if device.kind == "cuda":
        free, _total = torch.cuda.mem_get_info()
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def offline_choices() -> str:
    return ", ".join(OFFLINE_MODELS)


class ModelManager:
    def __init__(self, device: DeviceInfo | None = None, memory_budget_bytes: int | None = None, offline: bool = False,
                 allow_remote_code: bool = False):
        self.device = device or detect_device()
        self.offline = offline
        self.allow_remote_code = allow_remote_code  # the operator's choice (Settings), never a visitor's
        self.memory_budget = memory_budget_bytes or int(available_memory_bytes(self.device) * 0.6)
        self._cache: OrderedDict[tuple, LoadedModel] = OrderedDict()
        self._custom: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._locks: dict[Any, threading.Lock] = {}
        self._guard = threading.Lock()
        self._registered: set[str] = set()  # every id register() has given out, held or evicted since

    # ---- resolution -------------------------------------------------------------------
    def resolve(self, model_id: str, progress: Progress | None = None) -> Resolved:
        """Local folder first, then an offline package, then the hub (unless offline)."""
        model_id = (model_id or "").strip()
        if not model_id:
            raise ModelLoadError("No model given: pick a preset or type a Hugging Face id or a local folder.")
        folder = Path(model_id).expanduser()
        if folder.is_dir():
            return Resolved(model_id, str(folder.resolve()), "local folder")
        if model_id in OFFLINE_MODELS:
            try:
                return Resolved(model_id, str(offline_folder(model_id, progress)), "offline package")
            except FileNotFoundError as err:
                if self.offline:  # online (e.g. a Space without the packages), the hub copy is next
                    raise ModelLoadError(f"Offline model '{model_id}' is unavailable: {err}") from err
        if self.offline or "/" not in model_id and not find_preset(model_id):
            where = "offline mode is on" if self.offline else "it is not a folder on this machine"
            raise ModelLoadError(f"Cannot load '{model_id}': {where}. Offline choices: {offline_choices()}.")
        return Resolved(model_id, model_id, "hub")

    # ---- loading ----------------------------------------------------------------------
    def _lock_for(self, key) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def load(self, model_id: str, task: str = CAUSAL_LM, precision: str = "auto", attn_implementation: str | None = None,
             trust_remote_code: bool = False, progress: Progress | None = None) -> LoadedModel:
        """Return the cached model for this key, loading it (once, under a lock) if needed."""
        if trust_remote_code and not self.allow_remote_code:
            raise ModelLoadError("Running a model's own code is turned off on this server. The operator can allow it "
                                 "with --allow-remote-code (or LLMPG_ALLOW_REMOTE_CODE=1).")
        key = (model_id.strip(), task, precision, self.device.kind, attn_implementation)
        with self._lock_for(key):
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            loaded = self._load_uncached(model_id.strip(), task, precision, attn_implementation, trust_remote_code, progress)
            self._make_room(loaded.nbytes)
            with self._guard:
                self._cache[key] = loaded
            return loaded

    def _load_uncached(self, model_id, task, precision, attn, trust_remote_code, progress) -> LoadedModel:
        report = progress or (lambda *_: None)
        start = time.perf_counter()
        resolved = self.resolve(model_id, progress)
        if resolved.source == "hub":
            self._check_fits(resolved, task, trust_remote_code)
        report(0.5, f"Loading {model_id} from {resolved.source}")
        wanted = default_precision(self.device.kind) if precision == "auto" else precision
        kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": trust_remote_code, "dtype": load_dtype(wanted)}
        if attn:
            kwargs["attn_implementation"] = attn
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)
            model = load_weights(task, resolved.path, kwargs)
        except Exception as err:  # hub, file and config errors all become one readable message
            raise ModelLoadError(self._explain_failure(model_id, resolved, err)) from err
        model.eval()
        measured: dict[str, Measurement] = {}
        skipped: dict[str, str] = {}
        if precision == "auto" and self.device.kind == "cpu" and task == CAUSAL_LM:
            report(0.8, "Measuring the fastest precision for this CPU (once per architecture)")
            choice = choose_cpu_precision(model, tokenizer, free_bytes=lambda: available_memory_bytes(self.device))
            wanted, measured, skipped = choice.best, choice.measured, choice.skipped
        if self.device.kind != "cpu":
            model.to(self.device.torch_device)
        if wanted != "fp32" or self.device.kind != "cpu":
            model = apply_precision(model, wanted)
        report(1.0, f"{model_id} ready")
        return LoadedModel(model_id, task, resolved.source, resolved.path, model, tokenizer, self.device.kind, wanted,
                           bool(getattr(tokenizer, "chat_template", None)), time.perf_counter() - start,
                           model_nbytes(model), measured, skipped)

    def _check_fits(self, resolved: Resolved, task: str, trust_remote_code: bool) -> None:
        """Refuse before downloading a model that cannot fit in memory."""
        preset = find_preset(resolved.model_id)
        if preset and preset.params_b:
            need = int(preset.params_b * 1e9 * 2)  # at least 2 bytes a parameter
        else:
            need = self._params_from_config(resolved, task, trust_remote_code) * 2
        free = available_memory_bytes(self.device)
        if need > free:
            raise ModelLoadError(f"'{resolved.model_id}' needs about {need / 2**30:.1f} GiB but only "
                                 f"{free / 2**30:.1f} GiB is free on {self.device.kind}. Pick a smaller model.")

    def _params_from_config(self, resolved: Resolved, task: str, trust_remote_code: bool) -> int:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)
        except Exception as err:
            raise ModelLoadError(self._explain_failure(resolved.model_id, resolved, err)) from err
        with torch.device("meta"):
            skeleton = _auto_class(task).from_config(config, trust_remote_code=trust_remote_code)
        return sum(p.numel() for p in skeleton.parameters())

    @staticmethod
    def _explain_failure(model_id: str, resolved: Resolved, err: Exception) -> str:
        text = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        if "safetensors" in text.lower():
            hint = "it has no safetensors weights (pickle .bin files are refused for safety)"
        elif "trust_remote_code" in text:
            hint = "it needs custom code; tick 'Allow remote code' only if you trust its authors"
        elif resolved.source == "hub":
            hint = "the Hugging Face Hub has no such model or could not be reached"
        else:
            hint = text
        return f"Could not load '{model_id}': {hint}. Offline choices: {offline_choices()}. ({type(err).__name__}: {text})"

    # ---- memory -------------------------------------------------------------------------
    def _used_bytes(self) -> int:
        return sum(m.nbytes for m in self._cache.values()) + sum(n for _, n in self._custom.values())

    def _make_room(self, incoming: int) -> None:
        with self._guard:
            while self._cache and self._used_bytes() + incoming > self.memory_budget:
                self._cache.popitem(last=False)
            while self._custom and self._used_bytes() + incoming > self.memory_budget:
                self._custom.popitem(last=False)
        if self.device.kind == "cuda":
            torch.cuda.empty_cache()

    # ---- other shared objects ------------------------------------------------------------------
    def get_or_create(self, key: str, factory: Callable[[], Any], nbytes: int = 0) -> Any:
        """Cache any expensive object (a spaCy pipeline, a built classifier) under the same budget."""
        with self._lock_for(key):
            if key in self._custom:
                self._custom.move_to_end(key)
                return self._custom[key][0]
            value = factory()
            self._make_room(nbytes)
            with self._guard:
                self._custom[key] = (value, nbytes)
            return value

    def register(self, loaded: LoadedModel) -> LoadedModel:
        """Make an in-memory model (e.g. a quantized variant) loadable by id from every tab; returns it as registered.
        An id names one model for the server's whole life, since Chat keeps an engine per id: a model registered
        under an id already given out (a variant rebuilt with other options) gets the next free "#2", "#3"."""
        self._make_room(loaded.nbytes)
        with self._guard:
            wanted, n = loaded.model_id, 2
            while loaded.model_id in self._registered:
                loaded, n = replace(loaded, model_id=f"{wanted} #{n}"), n + 1
            self._registered.add(loaded.model_id)
            self._cache[(loaded.model_id, loaded.task, "auto", self.device.kind, None)] = loaded
        return loaded

    def held(self, recipe) -> LoadedModel | None:
        """The in-memory model made from this recipe, while it is still held."""
        with self._guard:
            return next((m for m in self._cache.values() if m.recipe is not None and m.recipe == recipe), None)

    def tokenizer(self, model_id: str, progress: Progress | None = None):
        """A model's tokenizer alone (the Tokenizer view), loaded once; models are not loaded for it."""
        resolved = self.resolve(model_id, progress)

        def load():
            from transformers import AutoTokenizer

            try:
                return AutoTokenizer.from_pretrained(resolved.path)
            except Exception as err:  # hub, file and config errors alike
                raise ModelLoadError(self._explain_failure(model_id, resolved, err)) from err

        return self.get_or_create(f"tokenizer:{resolved.path}", load)

    def in_memory(self, model_id: str) -> bool:
        """True for a model that exists only here (a registered variant), not as files to load again."""
        with self._guard:
            return any(m.model_id == model_id and m.source == "memory" for m in self._cache.values())

    def loaded(self) -> list[LoadedModel]:
        with self._guard:
            return list(self._cache.values())

    def unload(self, model_id: str) -> None:
        with self._guard:
            for key in [k for k in self._cache if k[0] == model_id]:
                del self._cache[key]
