"""Which runtime serves a chat model, chosen by measurement, and one engine per served model for every user.

On a CPU, a model whose architecture the ONNX exporter handles has candidates: ONNX exports at int4, int8 and fp32
(built once, cached) and, where the CPU multiplies bf16 natively, PyTorch at bf16. Each is timed as users run it
(core/chat/faithful.py: one request and a batch, default sampling), then checked against fp32 PyTorch in order of
speed, fastest first: next-token agreement, perplexity and the generation check. The first that keeps fp32's
quality serves; for ONNX Runtime, its thread and spinning settings are then chosen by timing them too. If none
does, or the runtime is missing, or the export fails, PyTorch serves (at the precision the model manager measured)
and the summary says why. On a GPU, PyTorch serves in bf16/fp16. Every choice and measurement is remembered on disk,
keyed by the model's files and this CPU.
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from core.chat.backends import Backend, OnnxBackend, TorchBackend
from core.chat.engine import ChatEngine
from core.chat.faithful import Quality, Reference, measure_speed, text_perplexity
from core.chat.prompting import context_length
from core.common.errors import InputError, PlaygroundError
from core.common.json_cache import locked, read_json, write_json
from core.common.progress import forward_only, span
from core.models import onnx_runtime
from core.models.device import cpu_signature, native_bf16
from core.models.manager import LoadedModel, ModelManager
from core.models.paths import cache_dir
from core.models.precision import probe_ids
from core.models.registry import CAUSAL_LM

Progress = Callable[[float, str], None]
AUTO, TORCH, ONNX = "auto", "torch", "onnx"
# What a comparison (or the API) may ask for by name instead of the measured choice.
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16-weight", "int8-weight", "int8-dynamic", "onnx-fp32", "onnx-int8",
                     "onnx-int4")
ONNX_CANDIDATES = ("int4", "int8", "fp32")
# ONNX Runtime's settings tried for the export that serves: (intra-op threads, 0 = all of ours; spin after a run).
ORT_SETTINGS = ((0, True), (0, False), (1, True))
ORT_ROUNDS = 2
MEASURE_BATCH = 32  # the check questions' replies are written in one batch
# Below this much weight, exporting costs more than it saves: PyTorch serves (unless ONNX is asked for by name).
MIN_ONNX_BYTES = 50 * 2**20
log = logging.getLogger("llm_playground")


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
    measured: dict[str, Quality] = field(default_factory=dict)  # every candidate the runtime choice measured
    loaded: LoadedModel | None = None  # the PyTorch model, when PyTorch serves
    ort_settings: tuple[int, bool] | None = None  # ONNX Runtime's (threads, spinning), when it serves

    @property
    def backend(self) -> Backend:
        return self.engine.backend

    @property
    def context(self) -> int:
        return self.backend.context


@dataclass(frozen=True)
class RuntimeChoice:
    """What the measurements chose: a candidate name ("onnx-fp32", "bf16", ...) or None, and why."""

    candidate: str | None
    measured: dict[str, Quality]  # the candidates whose quality was checked, fastest first
    speeds: dict[str, float]  # every candidate's ranking seconds (lower is faster)
    ort_settings: tuple[int, bool] = (0, True)

    def as_dict(self) -> dict:
        return {"candidate": self.candidate, "measured": {k: q.as_dict() for k, q in self.measured.items()},
                "speeds": self.speeds, "ort_settings": list(self.ort_settings)}

    @classmethod
    def from_dict(cls, values: dict) -> RuntimeChoice:
        return cls(values["candidate"], {k: Quality.from_dict(q) for k, q in values["measured"].items()},
                   values["speeds"], tuple(values["ort_settings"]))


def decode_speed(backend: Backend, prompt: list[int], tokens: int) -> float:
    """Greedy tokens/s of one request after its prompt, forward passes alone (the Quantize tab's figure)."""
    logits, [prefilled] = backend.read([prompt])
    store = backend.new_store()
    store.add(0, prefilled)
    token = int(logits[0].argmax())
    start = time.perf_counter()
    for _ in range(tokens):
        token = int(store.decode([token])[0].argmax())
    return tokens / (time.perf_counter() - start)


def _memo_key(folder: Path) -> str:
    return f"v4|{onnx_runtime.fingerprint(folder)}|{cpu_signature()}|t{torch.get_num_threads()}"


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
                    served = self._served[key]
                    if served.loaded is not None and served.loaded.source == "memory":  # Quantize may have measured
                        served.quality = self._torch_quality(served.loaded, served.backend)  # it since: no cost
                    return served
            report = forward_only(progress or (lambda *_: None))
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
                served = self._serve_measured(model_id, progress, notices)
                if served is not None:
                    return served
            except (onnx_runtime.OnnxExportError, OSError, RuntimeError, ValueError) as err:
                log.warning("ONNX path unavailable for %s: %s", model_id, err)
                notices.append(f"The ONNX fast path failed ({err}); PyTorch serves this model.")
        return self._torch_served(self.manager.load(model_id, CAUSAL_LM, trust_remote_code=trust_remote_code,
                                                    progress=progress), notices)

    def _torch_served(self, loaded: LoadedModel, notices: list[str] | None = None, quality: Quality | None = None,
                      measured: dict[str, Quality] | None = None) -> ServedModel:
        backend = TorchBackend(loaded.model, loaded.precision, loaded.device,
                               context_length(loaded.model, loaded.tokenizer), self.max_batch)
        return ServedModel(loaded.model_id, ChatEngine(backend, loaded.tokenizer, eos_ids(loaded.model, loaded.tokenizer)),
                           loaded.tokenizer, loaded.family, loaded.is_chat, quality or self._torch_quality(loaded, backend),
                           notices or [], measured or {}, loaded=loaded)

    def _onnx_model(self, folder: Path, precision: str, progress: Progress, settings: tuple[int, bool] = (0, True)):
        exported = onnx_runtime.export(folder, precision, progress)
        threads, spinning = settings
        return self.manager.get_or_create(f"onnx:{exported}:{threads}:{spinning}",
                                          lambda: onnx_runtime.OnnxModel(exported, threads or None, spinning),
                                          onnx_runtime.onnx_bytes(exported))

    def _build_at(self, model_id: str, trust_remote_code: bool, precision: str, progress: Progress) -> ServedModel:
        """A precision asked for by name: PyTorch at that precision, or that ONNX export (no quality gate)."""
        if not precision.startswith("onnx-"):
            return self._torch_served(self.manager.load(model_id, CAUSAL_LM, precision=precision,
                                                        trust_remote_code=trust_remote_code, progress=progress))
        resolved = self.manager.resolve(model_id, progress)
        folder = Path(resolved.path)
        reason = onnx_runtime.unavailable_reason() or (None if folder.is_dir() else "it needs a model folder on disk")
        if reason:
            raise InputError(f"'{precision}' cannot serve {model_id}: {reason}.")
        return self._onnx_served(model_id, folder, precision.removeprefix("onnx-"), progress)

    def _onnx_served(self, model_id: str, folder: Path, precision: str, progress: Progress,
                     choice: RuntimeChoice | None = None, notices: list[str] | None = None) -> ServedModel:
        from transformers import AutoConfig, AutoTokenizer

        settings = choice.ort_settings if choice else (0, True)
        backend = OnnxBackend(self._onnx_model(folder, precision, progress, settings), precision, self.max_batch)
        tokenizer, config = AutoTokenizer.from_pretrained(folder), AutoConfig.from_pretrained(folder)
        eos = eos_ids_from(getattr(config, "eos_token_id", None), tokenizer)
        measured = choice.measured if choice else {}
        return ServedModel(model_id, ChatEngine(backend, tokenizer, eos), tokenizer, config.model_type,
                           bool(getattr(tokenizer, "chat_template", None)), measured.get(f"onnx-{precision}"),
                           notices or [], measured, ort_settings=settings)

    def _serve_measured(self, model_id: str, progress: Progress, notices: list[str]) -> ServedModel | None:
        """The measured choice for a local model folder, or None when PyTorch serves it as the manager loads it."""
        from transformers import AutoConfig

        if self.manager.in_memory(model_id):
            return None  # a variant built in the Quantize tab: PyTorch runs it as it is
        resolved = self.manager.resolve(model_id, span(progress, 0, 0.35))
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
        choice = self._choice(model_id, folder, span(progress, 0.35, 0.95))
        progress = span(progress, 0.95, 1.0)
        if choice.candidate is None:
            notices.append("No faster runtime kept fp32's quality (see how the runtime was chosen); PyTorch serves "
                           "this model.")
            return None
        if choice.candidate.startswith("onnx-"):
            return self._onnx_served(model_id, folder, choice.candidate.removeprefix("onnx-"), progress, choice, notices)
        loaded = self.manager.load(model_id, CAUSAL_LM, precision=choice.candidate, progress=progress)
        return self._torch_served(loaded, notices, choice.measured[choice.candidate], choice.measured)

    # ---- the runtime choice -------------------------------------------------------------------------------------
    def _choice(self, model_id: str, folder: Path, progress: Progress) -> RuntimeChoice:
        """Measured once per model and CPU, then read from the cache."""
        memo = cache_dir() / "runtime_choices.json"
        key = _memo_key(folder)
        with locked(memo):
            known = read_json(memo, {})
            if key not in known:
                known[key] = self._measure_choice(model_id, folder, progress).as_dict()
                write_json(memo, known)
        return RuntimeChoice.from_dict(known[key])

    def _candidates(self, model_id: str, folder: Path) -> dict[str, Callable[[Progress], Backend]]:
        """Each candidate's name and how to build its backend (reporting to a progress callback)."""
        made = {f"onnx-{p}": (lambda report, p=p: OnnxBackend(onnx_runtime.OnnxModel(
            onnx_runtime.export(folder, p, report)), p, MEASURE_BATCH)) for p in ONNX_CANDIDATES}
        if native_bf16():
            def bf16(report: Progress) -> Backend:
                loaded = self.manager.load(model_id, CAUSAL_LM, precision="bf16", progress=report)
                return TorchBackend(loaded.model, "bf16", loaded.device, context_length(loaded.model, loaded.tokenizer),
                                    MEASURE_BATCH)
            made["bf16"] = bf16
        return made

    def _measure_choice(self, model_id: str, folder: Path, progress: Progress) -> RuntimeChoice:
        """One candidate in memory at a time (built again to be checked): the first use of a model must not need
        the memory of all of them at once."""
        fp32 = self.manager.load(model_id, CAUSAL_LM, precision="fp32", progress=span(progress, 0, 0.05))
        tokenizer, eos, is_chat = fp32.tokenizer, eos_ids(fp32.model, fp32.tokenizer), fp32.is_chat
        prompt = probe_ids(tokenizer)[0].tolist()[:48]
        candidates, speeds = self._candidates(model_id, folder), {}
        for n, (name, make) in enumerate(candidates.items()):
            stage = span(progress, 0.05 + 0.5 * n / len(candidates), 0.05 + 0.5 * (n + 1) / len(candidates))
            backend = make(span(stage, 0, 0.8))
            stage(0.85, f"Timing {name} as users run it (once)")
            speeds[name] = measure_speed(backend, prompt)
            del backend
            gc.collect()
        progress(0.56, "Measuring the fp32 model's predictions and answers (once)")
        fp32_backend = TorchBackend(fp32.model, "fp32", fp32.device, context_length(fp32.model, tokenizer), MEASURE_BATCH)
        reference = Reference.of(fp32_backend, tokenizer, eos, is_chat)
        measured, chosen = {}, None
        for n, name in enumerate(sorted(speeds, key=lambda c: speeds[c].seconds)):
            stage = span(progress, 0.65 + 0.25 * n / len(speeds), 0.65 + 0.25 * (n + 1) / len(speeds))
            stage(0, f"Checking {name} against fp32 (once)")
            quality = reference.measure(candidates[name](lambda *_: None), tokenizer, eos, is_chat,
                                        lambda what: stage(0.5, f"Checking {name}: {what}"))
            gc.collect()
            measured[name] = replace(quality, decode_tok_s=speeds[name].alone, batch_tok_s=speeds[name].batched)
            if measured[name].kept:
                chosen = name
                break
        settings = (self._ort_settings(folder, chosen, prompt, span(progress, 0.9, 1.0))
                    if chosen and chosen.startswith("onnx-") else (0, True))
        return RuntimeChoice(chosen, measured, {k: v.seconds for k, v in speeds.items()}, settings)

    def _ort_settings(self, folder: Path, candidate: str, prompt: list[int], progress: Progress) -> tuple[int, bool]:
        """ONNX Runtime's threads spin after each run and can take the core the sampler and the web server need, or
        sleep and wake slower: time each setting, in interleaved rounds (the cores are shared and noisy), with one
        session in memory at a time."""
        precision = candidate.removeprefix("onnx-")
        exported = onnx_runtime.export(folder, precision, progress)
        timed: dict[tuple[int, bool], float] = {}
        for round_ in range(ORT_ROUNDS):
            for n, (threads, spinning) in enumerate(ORT_SETTINGS):
                progress((round_ * len(ORT_SETTINGS) + n) / (ORT_ROUNDS * len(ORT_SETTINGS)),
                         f"Timing ONNX Runtime's thread settings, round {round_ + 1} of {ORT_ROUNDS} (once)")
                backend = OnnxBackend(onnx_runtime.OnnxModel(exported, threads or None, spinning), precision)
                seconds = measure_speed(backend, prompt).seconds
                timed[(threads, spinning)] = min(timed.get((threads, spinning), float("inf")), seconds)
                del backend
                gc.collect()
        return min(timed, key=timed.get)

    def _torch_quality(self, loaded: LoadedModel, backend: TorchBackend) -> Quality | None:
        """Agreement from the precision measurement; perplexity measured here, once per model and precision. An
        in-memory variant shows the figures of the tab that made it: measured here it would be its own reference."""
        if loaded.source == "memory":
            figures = loaded.against_fp32
            return None if figures is None else Quality(figures.agreement, figures.perplexity,
                                                        figures.fp32_perplexity, carried=figures)
        memo = cache_dir() / "torch_quality.json"
        key = f"v2|{loaded.path}|{loaded.precision}|{loaded.device}"
        try:
            with locked(memo):
                known = read_json(memo, {})
                if key not in known:
                    agreement = loaded.precision_measured.get(loaded.precision)
                    ppl = text_perplexity(backend, loaded.tokenizer)
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
