"""The chat engine over each runtime: ONNX Runtime exports of tiny LLaMA and Phi models against PyTorch, the
choice between runtimes by measured quality, and the fallbacks when the fast path cannot serve."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.chat import serving
from core.chat.backends import OnnxBackend
from core.chat.engine import ChatEngine
from core.chat.types import FinishReason
from core.chat.sampling import SamplingSettings
from core.chat.faithful import check_questions
from core.chat.serving import ONNX, ChatRuntimes, torch_engine
from core.models import onnx_runtime
from core.models.manager import ModelManager

GREEDY = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=10)
PROMPTS = ["The capital of France is", "Language models predict", "I loved this movie, it was", "Hello"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One cache for the module, so each tiny model is exported once."""
    import os

    before = os.environ.get("LLMPG_HOME")
    os.environ["LLMPG_HOME"] = str(tmp_path_factory.mktemp("llmpg-home"))
    yield
    if before is None:
        os.environ.pop("LLMPG_HOME")
    else:
        os.environ["LLMPG_HOME"] = before


@pytest.mark.parametrize("family", ["llama", "phi"])
def test_onnx_export_replies_like_pytorch_alone_and_batched(home, tiny_lm_dirs, family, monkeypatch):
    monkeypatch.setattr(serving, "eos_ids", lambda *_: set())
    folder = tiny_lm_dirs[family]
    model, tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    onnx = ChatEngine(OnnxBackend(onnx_runtime.OnnxModel(onnx_runtime.export(folder, "fp32")), "fp32", 4), tok, set())
    reference = torch_engine(model, tok)
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    alone = [onnx.submit(ids, GREEDY).result() for ids in prompts]
    together = [onnx.submit(ids, GREEDY) for ids in prompts]
    for ids, a, b in zip(prompts, alone, [r.result() for r in together]):
        assert a.text == reference.submit(ids, GREEDY).result().text  # same logits: fp32 export, same model
        assert b.text == a.text and b.stats.finish is FinishReason.LENGTH
        assert len(b.steps) == 10 and all(0 < s.prob <= 1 and len(s.alt_ids) == 5 for s in b.steps)
    assert max(r.result().stats.batch for r in together) > 1
    assert onnx.backend.full_logits(prompts[0]).shape == (len(prompts[0]), len(tok))


def test_the_runtime_is_chosen_by_measured_quality(home, tiny_lm_dirs, monkeypatch):
    monkeypatch.setattr(serving, "ONNX_CANDIDATES", ("fp32",))  # an export that certainly keeps quality
    monkeypatch.setattr(serving, "native_bf16", lambda: False)
    served = ChatRuntimes(ModelManager(offline=True), prefer=ONNX).serve(str(tiny_lm_dirs["llama"]))
    assert served.backend.runtime == "ONNX Runtime" and served.backend.precision == "fp32"
    assert served.quality.agreement == 1.0 and served.quality.perplexity == pytest.approx(
        served.quality.fp32_perplexity, rel=1e-3) and served.quality.decode_tok_s > 0
    check = served.quality.generation
    assert check.passed and check.identical == check.asked == 2 * len(check_questions())  # an exact export
    assert served.ort_settings in serving.ORT_SETTINGS and served.quality.batch_tok_s > 0
    reply = served.engine.submit(served.tokenizer("Hi")["input_ids"], GREEDY).result()
    assert reply.done and reply.steps


def test_the_generation_check_rejects_a_variant_that_garbles_answers(tiny_lm_dirs, monkeypatch):
    """Teacher-forced checks are set to pass anything here, so the generation check alone decides."""
    from core.chat import faithful
    from core.chat.backends import TorchBackend
    from core.chat.faithful import CheckQuestion, Reference, greedy_replies

    folder = tiny_lm_dirs["llama"]
    tok = AutoTokenizer.from_pretrained(folder)
    models = {name: AutoModelForCausalLM.from_pretrained(folder).eval() for name in ("fp32", "same", "damaged")}
    with torch.no_grad():
        models["damaged"].lm_head.weight.add_(torch.randn_like(models["damaged"].lm_head.weight) * 0.5)
    backends = {name: TorchBackend(m, "fp32", "cpu", 256) for name, m in models.items()}
    eos = serving.eos_ids(models["fp32"], tok)
    asked = [CheckQuestion(q, ("-",)) for q in PROMPTS]
    said = greedy_replies(backends["fp32"], tok, eos, True, asked)
    # the "right" answers are fp32's own first words, so fp32 answers every question right
    questions = [CheckQuestion(q, tuple(r.split()[0] for r in said[2 * i:2 * i + 2] if r.split()))
                 for i, q in enumerate(PROMPTS)]
    monkeypatch.setattr(faithful, "check_questions", lambda split="choose": questions)
    monkeypatch.setattr(faithful, "MIN_AGREEMENT", 0.0)
    monkeypatch.setattr(faithful, "MAX_PERPLEXITY_RATIO", float("inf"))
    reference = Reference.of(backends["fp32"], tok, eos, True)
    same = reference.measure(backends["same"], tok, eos, True)
    damaged = reference.measure(backends["damaged"], tok, eos, True)
    assert same.kept and same.generation.identical == same.generation.asked
    assert damaged.teacher_forced_ok and not damaged.generation.passed and not damaged.kept
    assert damaged.generation.kept < damaged.generation.fp32_right == same.generation.fp32_right > 0


def test_without_the_runtime_or_when_the_export_fails_pytorch_serves_and_says_why(home, tiny_lm_dirs, monkeypatch):
    monkeypatch.setattr(onnx_runtime, "unavailable_reason",
                        lambda model_type=None: "the package onnxruntime-genai is not installed")
    served = ChatRuntimes(ModelManager(offline=True), prefer=ONNX).serve(str(tiny_lm_dirs["llama"]))
    assert served.backend.runtime == "PyTorch" and any("not installed" in n for n in served.notices)
    monkeypatch.undo()
    broken = ChatRuntimes(ModelManager(offline=True), prefer=ONNX).serve(str(tiny_lm_dirs["phi3"]))  # exporter fails
    assert broken.backend.runtime == "PyTorch" and any("ONNX fast path failed" in n for n in broken.notices)
    assert broken.engine.submit(broken.tokenizer("Hi")["input_ids"], GREEDY).result().done
    gpt2 = ChatRuntimes(ModelManager(offline=True), prefer=ONNX).serve(str(tiny_lm_dirs["gpt2"]))
    assert gpt2.backend.runtime == "PyTorch" and any("does not handle the 'gpt2'" in n for n in gpt2.notices)


def test_the_cpu_runtime_precisions_are_quantize_rows(home, tiny_lm_dirs):
    from core.common.errors import InputError
    from core.quantize.metrics import EvalSettings, compare_variants
    from core.quantize.variants import register_variant

    loaded = ModelManager(offline=True).load(str(tiny_lm_dirs["llama"]), precision="fp32")
    text = "The capital of France is Paris. " * 20
    *_, comparison = compare_variants(loaded.model_id, "causal-lm", loaded.model, loaded.tokenizer, ["onnx-int8"], text,
                                      settings=EvalSettings(max_eval_tokens=128, decode_tokens=4, repeats=1))
    fp32, onnx = comparison.results
    assert onnx.status == "ok", onnx.notes
    folder = onnx_runtime.export_folder(tiny_lm_dirs["llama"], "int8")
    assert onnx.size_mb == pytest.approx(onnx_runtime.onnx_bytes(folder) / 2**20)
    assert 0 <= onnx.top1_agreement <= 1 and onnx.perplexity > 1 and onnx.decode_tok_s > 0
    assert "onnxruntime-genai export" in onnx.notes and onnx.compressed_share > 0.5
    with pytest.raises(InputError, match="already runs this model on ONNX Runtime"):
        register_variant(ModelManager(offline=True), loaded, "onnx-int8", None)
