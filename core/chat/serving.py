"""Which runtime serves a chat model, chosen by measurement, and one engine per served model for every user.

On a CPU, a model whose architecture the ONNX exporter handles is exported at int4 and int8 (once, cached)
and each export is measured against the fp32 PyTorch model: next-token agreement on a probe text and
perplexity on `assets/eval_text.txt`. The fastest export that keeps at least 90 % agreement and stays
within 3 % of fp32's perplexity serves; if none does, or the runtime is missing, or the export fails,
PyTorch serves (at the precision the model manager measured) and the summary says why. On a GPU, PyTorch
serves in bf16/fp16. Every choice and measurement is remembered on disk, keyed by the model's files and
this machine.
"""
from __future__ import annotations

import logging
import math
import platform
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from core.chat.backends import Backend, OnnxBackend, TorchBackend
from core.chat.engine import ChatEngine
from core.chat.prompting import context_length
from core.common.errors import InputError, PlaygroundError
from core.common.json_cache import locked, read_json, write_json
from core.models import onnx_runtime
from core.models.manager import LoadedModel, ModelManager
from core.models.paths import assets_dir, cache_dir
from core.models.precision import probe_ids
from core.models.registry import CAUSAL_LM

Progress = Callable[[float, str], None]
AUTO, TORCH, ONNX = "auto", "torch", "onnx"
MIN_AGREEMENT = 0.90
MAX_PERPLEXITY_RATIO = 1.03
EVAL_TOKENS = 512
# What a comparison (or the API) may ask for by name instead of the measured choice.
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16-weight", "int8-weight", "int8-dynamic", "onnx-int8", "onnx-int4")
ONNX_CANDIDATES = ("int4", "int8", "int8-b32")  # tried fastest first; the first that keeps quality serves
# Below this much weight, exporting costs more than it saves: PyTorch serves (unless ONNX is asked for by name).
MIN_ONNX_BYTES = 50 * 2**20
log = logging.getLogger("llm_playground")


@dataclass(frozen=True)
class Quality:
    """How closely the served model predicts like the fp32 model."""

    agreement: float  # share of next-token predictions equal to fp32's on the probe text
    perplexity: float  # on the first EVAL_TOKENS tokens of assets/eval_text.txt
    fp32_perplexity: float
    decode_tok_s: float = 0.0  # measured with one request, greedy

    @property
    def kept(self) -> bool:
        return self.agreement >= MIN_AGREEMENT and self.perplexity <= self.fp32_perplexity * MAX_PERPLEXITY_RATIO

    def describe(self) -> str:
        fp32 = f" (fp32 {self.fp32_perplexity:.2f})" if self.fp32_perplexity == self.fp32_perplexity else ""
        return f"{self.agreement:.0%} same next tokens as fp32, perplexity {self.perplexity:.2f}{fp32}"


@dataclass
class ServedModel:
    """A chat model as users get it: its engine, tokenizer and what runs it."""

    model_id: str
    engine: ChatEngine
    tokenizer: object
    family: str
    is_chat: bool
    quality: Quality | None = None
    notices: list[str] = field(default_factory=list)  # e.g. why the fast path does not serve
    measured: dict[str, Quality] = field(default_factory=dict)  # every ONNX candidate that was tried
    loaded: LoadedModel | None = None  # the PyTorch model, when PyTorch serves

    @property
    def backend(self) -> Backend:
        return self.engine.backend

    @property
    def context(self) -> int:
        return self.backend.context


# ---- quality ------------------------------------------------------------------------------------------------------
def eval_ids(tokenizer, context: int = EVAL_TOKENS) -> list[int]:
    text = (assets_dir() / "eval_text.txt").read_text(encoding="utf-8")
    return tokenizer(text)["input_ids"][:min(EVAL_TOKENS, context)]


def perplexity_of(logits: torch.Tensor, ids: list[int]) -> float:
    log_probs = torch.log_softmax(logits[:-1].float(), dim=-1)
    return math.exp(-log_probs.gather(1, torch.tensor(ids[1:])[:, None]).mean().item())


@dataclass(frozen=True)
class Reference:
    """What the fp32 model predicts: the yardstick for every faster runtime or precision."""

    probe: list[int]
    probe_argmax: torch.Tensor
    eval: list[int]
    perplexity: float

    @classmethod
    def of(cls, full_logits: Callable[[list[int]], torch.Tensor], tokenizer, context: int) -> Reference:
        probe, ids = probe_ids(tokenizer)[0].tolist(), eval_ids(tokenizer, context)
        return cls(probe, full_logits(probe).argmax(-1), ids, perplexity_of(full_logits(ids), ids))

    def measure(self, backend: Backend, decode_tokens: int = 32) -> Quality:
        agreement = float((backend.full_logits(self.probe).argmax(-1) == self.probe_argmax).float().mean())
        return Quality(agreement, perplexity_of(backend.full_logits(self.eval), self.eval), self.perplexity,
                       decode_speed(backend, self.probe[:32], decode_tokens))


def decode_speed(backend: Backend, prompt: list[int], tokens: int) -> float:
    """Greedy tokens/s of one request after its prompt (the single-user chat speed)."""
    logits, [prefilled] = backend.read([prompt])
    store = backend.new_store()
    store.add(0, prefilled)
    token = int(logits[0].argmax())
    start = time.perf_counter()
    for _ in range(tokens):
        token = int(store.decode([token])[0].argmax())
    return tokens / (time.perf_counter() - start)


# ---- choosing a runtime -------------------------------------------------------------------------------------------
def _memo_key(folder: Path) -> str:
    return (f"v2|{onnx_runtime.fingerprint(folder)}|{platform.processor() or platform.machine()}|"
            f"t{torch.get_num_threads()}")


def choose_onnx(folder: Path, reference: Callable[[], Reference], progress: Progress) -> tuple[str | None, dict]:
    """(the ONNX precision that serves, or None; each candidate's Quality), measured once per model and machine."""
    memo = cache_dir() / "onnx_choices.json"
    key = _memo_key(folder)
    with locked(memo):
        known = read_json(memo, {})
        if key not in known:
            yardstick, measured = reference(), {}
            for precision in ONNX_CANDIDATES:
                exported = onnx_runtime.export(folder, precision, progress)
                progress(0.96, f"Measuring the ONNX {precision} export against fp32 (once)")
                quality = yardstick.measure(OnnxBackend(onnx_runtime.OnnxModel(exported), precision))
                measured[precision] = asdict(quality)
                if quality.kept:
                    break
            kept = [p for p, q in measured.items() if Quality(**q).kept]
            best = max(kept, key=lambda p: measured[p]["decode_tok_s"]) if kept else None
            known[key] = {"precision": best, "measured": measured}
            write_json(memo, known)
    entry = known[key]
    return entry["precision"], {p: Quality(**q) for p, q in entry["measured"].items()}


class ChatRuntimes:
    """Served chat models, one engine each, shared by every user (the Chat tab, the API, comparisons)."""

    def __init__(self, manager: ModelManager, prefer: str = AUTO, max_served: int = 3, max_batch: int = 16):
        self.manager, self.prefer, self.max_served, self.max_batch = manager, prefer, max_served, max_batch
        self._served: OrderedDict[tuple, ServedModel] = OrderedDict()
        self._locks: dict[tuple, threading.Lock] = {}
        self._guard = threading.Lock()
        self.errors: dict[str, str] = {}  # model id -> why its last background load failed

    def served(self) -> list[ServedModel]:
        with self._guard:
            return list(self._served.values())

    def ready(self, model_id: str) -> ServedModel | None:
        """The served model if its engine is built, without waiting for anything."""
        with self._guard:
            return self._served.get((model_id.strip(), False))

    def loading(self, model_id: str) -> bool:
        with self._guard:
            lock = self._locks.get((model_id.strip(), False))
        return lock is not None and lock.locked()

    def serve_in_background(self, model_id: str) -> None:
        """Start building the engine (an API caller is told to come back) unless that is already under way."""
        if self.loading(model_id) or self.ready(model_id):
            return

        def build() -> None:
            try:
                self.serve(model_id)
                self.errors.pop(model_id, None)
            except PlaygroundError as err:
                self.errors[model_id] = str(err)
            except Exception as err:  # logged; the caller sees the message on its next try
                log.exception("loading %s for the API failed", model_id)
                self.errors[model_id] = f"{type(err).__name__}: {err}"

        threading.Thread(target=build, name=f"load-{model_id[-20:]}", daemon=True).start()
        for _ in range(50):  # until the build holds its lock, so loading() says so
            if self.loading(model_id) or self.ready(model_id) or model_id in self.errors:
                return
            time.sleep(0.01)

    def serve(self, model_id: str, trust_remote_code: bool = False, progress: Progress | None = None,
              precision: str = AUTO) -> ServedModel:
        """The engine for this model (at the measured choice, or at a precision asked for by name), built on first use
        and remembered."""
        if precision not in PRECISION_CHOICES:
            raise InputError(f"Unknown precision '{precision}'; choose one of {', '.join(PRECISION_CHOICES)}.")
        key = (model_id.strip(), trust_remote_code) + ((precision,) if precision != AUTO else ())
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            with self._guard:
                if key in self._served:
                    self._served.move_to_end(key)
                    return self._served[key]
            report = progress or (lambda *_: None)
            served = (self._build(model_id.strip(), trust_remote_code, report) if precision == AUTO
                      else self._build_at(model_id.strip(), trust_remote_code, precision, report))
            with self._guard:
                self._served[key] = served
                while len(self._served) > self.max_served:
                    _, old = self._served.popitem(last=False)
                    old.engine.close()
            return served

    def _build(self, model_id: str, trust_remote_code: bool, progress: Progress) -> ServedModel:
        notices: list[str] = []
        if self.prefer != TORCH and not trust_remote_code and self.manager.device.kind == "cpu":
            try:
                served = self._serve_onnx(model_id, progress, notices)
                if served is not None:
                    return served
            except (onnx_runtime.OnnxExportError, OSError, RuntimeError, ValueError) as err:
                log.warning("ONNX path unavailable for %s: %s", model_id, err)
                notices.append(f"The ONNX fast path failed ({err}); PyTorch serves this model.")
        loaded = self.manager.load(model_id, CAUSAL_LM, trust_remote_code=trust_remote_code, progress=progress)
        backend = TorchBackend(loaded.model, loaded.precision, loaded.device, context_length(loaded.model, loaded.tokenizer),
                               self.max_batch)
        return ServedModel(loaded.model_id, ChatEngine(backend, loaded.tokenizer, eos_ids(loaded.model, loaded.tokenizer)),
                           loaded.tokenizer, loaded.family, loaded.is_chat, self._torch_quality(loaded, backend),
                           notices, loaded=loaded)

    def _build_at(self, model_id: str, trust_remote_code: bool, precision: str, progress: Progress) -> ServedModel:
        """A precision asked for by name: PyTorch at that precision, or that ONNX export (no quality gate)."""
        if not precision.startswith("onnx-"):
            loaded = self.manager.load(model_id, CAUSAL_LM, precision=precision, trust_remote_code=trust_remote_code,
                                       progress=progress)
            backend = TorchBackend(loaded.model, loaded.precision, loaded.device,
                                   context_length(loaded.model, loaded.tokenizer), self.max_batch)
            return ServedModel(loaded.model_id, ChatEngine(backend, loaded.tokenizer,
                                                           eos_ids(loaded.model, loaded.tokenizer)),
                               loaded.tokenizer, loaded.family, loaded.is_chat, loaded=loaded)
        from transformers import AutoConfig, AutoTokenizer

        resolved = self.manager.resolve(model_id, progress)
        folder = Path(resolved.path)
        reason = onnx_runtime.unavailable_reason() or (None if folder.is_dir() else "it needs a model folder on disk")
        if reason:
            raise InputError(f"'{precision}' cannot serve {model_id}: {reason}.")
        exported = onnx_runtime.export(folder, precision.removeprefix("onnx-"), progress)
        model = self.manager.get_or_create(f"onnx:{exported}", lambda: onnx_runtime.OnnxModel(exported),
                                           onnx_runtime.onnx_bytes(exported))
        tokenizer, config = AutoTokenizer.from_pretrained(folder), AutoConfig.from_pretrained(folder)
        return ServedModel(model_id, ChatEngine(OnnxBackend(model, precision.removeprefix("onnx-"), self.max_batch),
                                                tokenizer, eos_ids_from(getattr(config, "eos_token_id", None), tokenizer)),
                           tokenizer, config.model_type, bool(getattr(tokenizer, "chat_template", None)))

    def _serve_onnx(self, model_id: str, progress: Progress, notices: list[str]) -> ServedModel | None:
        from transformers import AutoConfig, AutoTokenizer

        if self.manager.in_memory(model_id):
            return None  # a variant built in the Quantize tab: PyTorch runs it as it is
        resolved = self.manager.resolve(model_id, progress)
        if resolved.source == "hub":
            return None  # hub models load through the manager (safetensors only, memory checked) and PyTorch
        folder = Path(resolved.path)
        if self.prefer == AUTO and sum(f.stat().st_size for f in folder.glob("*.safetensors")) < MIN_ONNX_BYTES:
            return None
        model_type = AutoConfig.from_pretrained(folder).model_type
        reason = onnx_runtime.unavailable_reason(model_type)
        if reason:
            if self.prefer == ONNX or model_type in onnx_runtime.SUPPORTED:
                notices.append(f"PyTorch serves this model: {reason}.")
            return None
        precision, measured = choose_onnx(folder, lambda: self._reference(model_id, progress), progress)
        if precision is None:
            tried = "; ".join(f"{p}: {q.describe()}" for p, q in measured.items())
            notices.append(f"No ONNX export kept fp32's quality ({tried}); PyTorch serves this model.")
            return None
        exported = onnx_runtime.export(folder, precision, progress)
        model = self.manager.get_or_create(f"onnx:{exported}", lambda: onnx_runtime.OnnxModel(exported),
                                           onnx_runtime.onnx_bytes(exported))
        backend = OnnxBackend(model, precision, self.max_batch)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        config = AutoConfig.from_pretrained(folder)
        eos = eos_ids_from(getattr(config, "eos_token_id", None), tokenizer)
        return ServedModel(model_id, ChatEngine(backend, tokenizer, eos), tokenizer, model_type,
                           bool(getattr(tokenizer, "chat_template", None)), measured[precision], notices, measured)

    def _reference(self, model_id: str, progress: Progress) -> Reference:
        fp32 = self.manager.load(model_id, CAUSAL_LM, precision="fp32", progress=progress)
        progress(0.9, "Measuring the fp32 model's predictions (once)")
        return Reference.of(TorchBackend(fp32.model, "fp32", fp32.device, 0).full_logits, fp32.tokenizer,
                            context_length(fp32.model, fp32.tokenizer))

    def _torch_quality(self, loaded: LoadedModel, backend: TorchBackend) -> Quality | None:
        """Agreement from the precision measurement; perplexity measured here, once per model and precision."""
        memo = cache_dir() / "torch_quality.json"
        key = f"v1|{loaded.path}|{loaded.precision}|{loaded.device}"
        try:
            with locked(memo):
                known = read_json(memo, {})
                if key not in known:
                    ids = eval_ids(loaded.tokenizer, backend.context)
                    agreement = loaded.precision_measured.get(loaded.precision)
                    ppl = perplexity_of(backend.full_logits(ids), ids)
                    fp32 = loaded.precision_measured.get("fp32")
                    known[key] = {"agreement": agreement.agreement if agreement else 1.0, "perplexity": ppl,
                                  "fp32_perplexity": ppl if fp32 is None or loaded.precision == "fp32" else float("nan")}
                    write_json(memo, known)
            return Quality(**known[key])
        except (PlaygroundError, ValueError, RuntimeError):  # a model too small to score: no summary figures
            return None


def eos_ids_from(configured, tokenizer) -> set[int]:
    ids = set(configured if isinstance(configured, (list, tuple)) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def eos_ids(model, tokenizer) -> set[int]:
    return eos_ids_from(getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer)


def torch_engine(model, tokenizer, precision: str = "fp32", max_batch: int = 16) -> ChatEngine:
    """An engine over an already loaded transformers model (scripts, tests, benchmarks)."""
    device = next(model.parameters()).device.type
    return ChatEngine(TorchBackend(model, precision, device, context_length(model, tokenizer), max_batch), tokenizer,
                      eos_ids(model, tokenizer))
