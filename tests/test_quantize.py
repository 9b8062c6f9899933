"""Core quantize/compare tests on tiny random GPT-2 and LLaMA models (and a tiny BERT classifier)."""
from __future__ import annotations

import io
import math
from dataclasses import replace

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from core.chat.faithful import Quality
from core.common.errors import InputError
from core.common.stopping import StopFlag
from core.models.paths import assets_dir
from core.models.precision import Int8WeightLinear, conv1d_to_linear
from core.models.registry import CAUSAL_LM, TEXT_CLASSIFICATION
from core.quantize.metrics import (
    EvalSettings,
    LabelledTexts,
    compare_variants,
    read_labelled_csv,
    serialized_bytes,
    size_quality_figure,
    speed_figure,
)
from core.evaluate.perplexity import perplexity
from core.quantize.variants import (
    CompressionOptions,
    block_linears,
    build_variant,
    calibrated,
    register_variant,
    unavailable_reason,
    variant_id,
)

FAST = EvalSettings(max_length=64, stride=32, max_eval_tokens=4096, prefill_tokens=16, decode_tokens=2, repeats=1)
TEXT = (assets_dir() / "eval_text.txt").read_text(encoding="utf-8")[:600]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm(request, tiny_lm_dirs):
    folder = tiny_lm_dirs[request.param]
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


@torch.no_grad()
def guide_perplexity(model, tokenizer, text: str, max_length: int, stride: int) -> float:
    """The loop of the transformers perplexity guide, verbatim in substance: loss from labels with -100 context."""
    ids = tokenizer(text, return_tensors="pt").input_ids
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, ids.size(1), stride):
        end = min(begin + max_length, ids.size(1))
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        loss = model(input_ids, labels=target_ids).loss
        num_loss_tokens = (target_ids != -100).sum().item() - target_ids.size(0)
        nll_sum += loss.item() * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end = end
        if end == ids.size(1):
            break
    return math.exp(nll_sum / n_tokens)


def test_perplexity_matches_direct_loss_in_one_window(lm):
    model, tok = lm
    text = TEXT[:300]
    ids = tok(text, return_tensors="pt").input_ids
    assert ids.shape[1] < 256
    with torch.no_grad():
        direct = math.exp(model(ids, labels=ids).loss.item())
    result = perplexity(model, tok, text, max_length=256, stride=128)
    assert result.windows == 1 and result.tokens == ids.shape[1] - 1
    assert result.perplexity == pytest.approx(direct, rel=0.01)


def test_sliding_window_perplexity_matches_the_transformers_guide(lm):
    model, tok = lm
    result = perplexity(model, tok, TEXT, max_length=64, stride=32)
    assert result.windows > 3
    assert result.tokens == tok(TEXT, return_tensors="pt").input_ids.shape[1] - 1  # every token after the first, once
    assert result.perplexity == pytest.approx(guide_perplexity(model, tok, TEXT, 64, 32), rel=0.01)


def test_conv1d_rewritten_as_exact_linear(tiny_lm_dirs):
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dirs["gpt2"]).eval()
    ids = torch.arange(1, 20)[None]
    with torch.no_grad():
        before = model(ids).logits
        assert conv1d_to_linear(model) == 8  # c_attn, c_proj, c_fc, mlp.c_proj in 2 layers
        after = model(ids).logits
    torch.testing.assert_close(before, after, atol=1e-5, rtol=1e-5)
    assert len(block_linears(model)) == 8


@pytest.mark.parametrize("name", ["int8-dynamic", "int8-weight"])
def test_int8_is_over_twice_smaller_and_still_agrees(lm, name):
    model, tok = lm
    built = build_variant(name, model, calibrated(CompressionOptions(), tok))
    assert built.compressed_share > 0.95  # embeddings included, not only the linears
    assert serialized_bytes(model) / serialized_bytes(built.model) >= 2.0
    ids = tok(TEXT[:200], return_tensors="pt").input_ids
    with torch.no_grad():
        agree = (model(ids).logits.argmax(-1) == built.model(ids).logits.argmax(-1)).float().mean().item()
    assert agree > 0.8
    assert not any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in model.modules())  # original untouched


def test_int8_weight_only_linear_is_close():
    torch.manual_seed(0)
    layer = nn.Linear(64, 32)
    x = torch.randn(8, 64)
    quantized = Int8WeightLinear(layer.weight, layer.bias)
    assert quantized.weight_int8.dtype == torch.int8 and quantized.scales.shape == (32,)
    error = (quantized(x) - layer(x)).abs().max().item()
    assert 0 < error < 0.01 * layer(x).abs().max().item()


def test_pruning_is_permanent_and_reaches_the_sparsity(lm):
    model, _ = lm
    built = build_variant("pruned", model, CompressionOptions(sparsity=0.3))
    for _, _, layer in block_linears(built.model):
        assert not hasattr(layer, "weight_orig") and not hasattr(layer, "weight_mask")
        assert (layer.weight == 0).float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert "sparsity 30.0%" in built.notes[-1]
    assert all((l.weight == 0).float().mean() < 0.01 for _, _, l in block_linears(model))


def stats_for(layer: nn.Linear, x: torch.Tensor):
    from core.quantize.activation_aware import InputStats

    x = x.double()
    return {layer: InputStats((x * x).sum(0), x.T @ x, x.shape[0])}


def test_whitened_low_rank_is_exact_at_full_rank_and_beats_plain_svd_on_the_data():
    from core.quantize.activation_aware import FactoredLinear, factorize

    torch.manual_seed(0)
    layer = nn.Linear(32, 48)
    x = torch.randn(200, 32) * torch.linspace(0.05, 5, 32)  # a few input features carry most of the signal
    stats = stats_for(layer, x)
    whitened, plain = factorize(layer.weight, stats[layer].gram), factorize(layer.weight, None)
    with torch.no_grad():
        torch.testing.assert_close(FactoredLinear(layer, whitened, 32)(x), layer(x), atol=1e-3, rtol=1e-3)
        errors = {name: (FactoredLinear(layer, f, 6)(x) - layer(x)).pow(2).mean().item()
                  for name, f in (("whitened", whitened), ("plain", plain))}
    assert errors["whitened"] < errors["plain"]  # the output error is what whitening minimizes


def test_shrunk_gram_uses_the_ledoit_wolf_coefficient_of_sklearn():
    from sklearn.covariance import ledoit_wolf_shrinkage

    from core.quantize.activation_aware import InputStats

    torch.manual_seed(0)
    x = (torch.randn(40, 64) * torch.linspace(0.1, 3, 64)).double()  # fewer samples than features: X^T X singular
    stats = InputStats((x * x).sum(0), x.T @ x, x.shape[0], float(((x * x).sum(1) ** 2).sum()))
    gram, shrink = stats.shrunk_gram()
    assert shrink == pytest.approx(ledoit_wolf_shrinkage(x.numpy(), assume_centered=True), rel=1e-6)
    assert torch.linalg.matrix_rank(x.T @ x) < 64 and torch.linalg.matrix_rank(gram) == 64


def test_the_budget_is_shared_by_relative_error_so_small_inputs_do_not_empty_a_layer():
    from core.quantize.activation_aware import allocate_ranks, factorize

    torch.manual_seed(0)
    weight = torch.randn(64, 64)
    quiet, loud = (factorize(weight, torch.eye(64, dtype=torch.float64) * scale) for scale in (1e-6, 1.0))
    ranks = allocate_ranks([quiet, loud], 0.3)
    assert ranks[0] == ranks[1]  # the same matrix: the same rank, however small its inputs


def test_wanda_meets_the_sparsity_exactly_and_keeps_big_activations():
    from core.quantize.activation_aware import wanda_mask

    weight = torch.ones(3, 8)
    sumsq = torch.tensor([1.0, 100, 1, 100, 1, 100, 1, 100], dtype=torch.float64)
    keep = wanda_mask(weight, sumsq, 0.5)
    assert (keep.sum(1) == 4).all() and keep[:, 1::2].all()  # per row, the inputs with large activations survive
    assert wanda_mask(weight, sumsq, 0.0).all()  # zero sparsity: nothing pruned
    two_four = wanda_mask(torch.randn(4, 16), sumsq.repeat(2), 0.5, "2:4")
    assert (two_four.reshape(4, 4, 4).sum(-1) == 2).all()


def test_activation_aware_variants_on_a_tiny_model(lm):
    from core.quantize.activation_aware import FactoredLinear

    model, tok = lm
    opts = calibrated(CompressionOptions(sparsity=0.5, cut=0.3), tok)
    wanda = build_variant("wanda", model, opts)
    pruned = [m for m in wanda.model.modules() if isinstance(m, nn.Linear)][:-1]
    assert all(float((m.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.02) for m in pruned)
    assert "Wanda unstructured" in wanda.notes[-1] and "calibration_text" in wanda.notes[-1]
    assert "no 2:4 sparse kernel" in build_variant("wanda-2:4", model, opts).notes[-1]
    for name in ("low-rank", "svd-llm"):
        built = build_variant(name, model, opts)
        assert any(isinstance(m, FactoredLinear) for m in built.model.modules())
        removed = float(built.notes[-1].split("cut: ")[1].split("%")[0]) / 100
        assert 0.3 <= removed < 0.33  # the budget is met: at least the cut, short of one more rank step
    with pytest.raises(InputError, match="between 0.01 and 0.99"):
        CompressionOptions(sparsity=1)
    with pytest.raises(InputError, match="Low-rank cut must be between"):
        CompressionOptions(cut=1.0)
    with pytest.raises(InputError, match="calibration text is empty"):
        calibrated(CompressionOptions(), tok, "   ")


def test_serialized_bytes_counts_what_torch_save_writes(lm):
    model, _ = lm
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    assert serialized_bytes(model) == len(buffer.getvalue())


def test_unavailable_variants_have_reasons():
    assert "CUDA" in unavailable_reason("fp16", "cpu")
    assert unavailable_reason("fp16", "cuda") is None
    assert unavailable_reason("int8-dynamic", "cpu") is None
    assert unavailable_reason("torchao-int4", "cpu")


def test_compare_lists_every_variant_in_one_run(tiny_lm_dirs):
    folder = tiny_lm_dirs["llama"]
    model, tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    names = ["int8-dynamic", "fp16", "bnb-nf4", "torchao-int4", "pruned"]
    *_, comparison = compare_variants("tiny", CAUSAL_LM, model, tok, names, TEXT, CompressionOptions(0.5, 0.2), FAST)
    rows = {r.variant: r for r in comparison.results}
    assert list(rows) == ["fp32"] + names  # the baseline first, nothing dropped
    assert rows["fp16"].status == "unavailable" and "CUDA" in rows["fp16"].notes
    assert rows["torchao-int4"].status == "unavailable" and rows["torchao-int4"].notes
    base = rows["fp32"]
    assert base.top1_agreement == 1.0 and base.mean_kl == pytest.approx(0, abs=1e-9) and base.size_ratio == 1.0
    assert base.perplexity == pytest.approx(perplexity(model, tok, TEXT, FAST.max_length, FAST.stride).perplexity, rel=1e-4)
    for name in ("int8-dynamic", "bnb-nf4", "pruned"):
        r = rows[name]
        assert r.status == "ok", r.notes
        assert r.size_mb > 0 and r.decode_tok_s > 0 and r.prefill_ms > 0 and r.peak_rss_mb is not None
        assert 0 <= r.top1_agreement <= 1 and r.mean_kl >= 0 and r.perplexity > 1
    assert rows["int8-dynamic"].size_ratio >= 2
    assert rows["bnb-nf4"].size_ratio > 1
    frame = comparison.frame()
    assert len(frame) == len(names) + 1 and "perplexity" in frame
    assert len(size_quality_figure(comparison).data[0].x) == 4 and len(speed_figure(comparison).data[0].y) == 4


def test_stop_between_variants(tiny_lm_dirs):
    folder = tiny_lm_dirs["gpt2"]
    model, tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    stop = StopFlag()
    seen = []
    for comparison in compare_variants("tiny", CAUSAL_LM, model, tok, ["bf16", "pruned"], TEXT, settings=FAST, stop=stop):
        seen.append(len(comparison.results))
        stop.stop()
    assert seen == [1]


def test_classifier_accuracy_and_agreement(tiny_classifier_dir, tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("text,label\nI loved it,positive\nawful food,negative\ngreat fun,1\nboring,0\n")
    data = read_labelled_csv(csv)
    assert data == LabelledTexts(["I loved it", "awful food", "great fun", "boring"], ["positive", "negative", "1", "0"])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_classifier_dir)
    with torch.no_grad():
        predicted = model(**tok(data.texts, padding=True, return_tensors="pt")).logits.argmax(-1).tolist()
    expected = sum(p == g for p, g in zip(predicted, [1, 0, 1, 0])) / 4
    *_, comparison = compare_variants("cls", TEXT_CLASSIFICATION, model, tok, ["int8-dynamic"], data, settings=FAST)
    base, int8 = comparison.results
    assert base.accuracy == expected and base.top1_agreement == 1.0
    assert int8.status == "ok" and int8.accuracy is not None and int8.prefill_ms > 0 and int8.perplexity is None


def test_registered_variant_is_offered_to_other_tabs(services, tiny_lm_dirs):
    base = services.manager.load(str(tiny_lm_dirs["llama"]), CAUSAL_LM, precision="fp32")
    loaded = register_variant(services.manager, base, "int8-dynamic", CompressionOptions())
    assert loaded.model_id == variant_id(base.model_id, "int8-dynamic") == "llama [int8-dynamic]"
    assert loaded.source == "memory" and loaded.precision == "int8-dynamic"
    assert services.manager.load(loaded.model_id, CAUSAL_LM) is loaded
    assert loaded.model_id in [value for _, value in services.model_choices(CAUSAL_LM)]


def test_chat_shows_a_variants_figures_from_its_comparison_and_never_compares_it_with_itself(services, tiny_lm_dirs):
    from core.chat.serving import ChatRuntimes

    base = services.manager.load(str(tiny_lm_dirs["llama"]), CAUSAL_LM, precision="fp32")
    opts = calibrated(CompressionOptions(), base.tokenizer)
    *_, comparison = compare_variants(base.model_id, CAUSAL_LM, base.model, base.tokenizer, ["pruned"], TEXT, opts, FAST)
    fp32, pruned = comparison.results
    figures = comparison.against_fp32("pruned", "the test text")
    assert (figures.agreement, figures.perplexity, figures.fp32_perplexity, figures.tokens) == (
        pruned.top1_agreement, pruned.perplexity, fp32.perplexity, comparison.eval_tokens)
    assert comparison.against_fp32("int8-weight", "the test text") is None  # not measured in this run
    loaded = register_variant(services.manager, base, "pruned", opts, figures)
    assert register_variant(services.manager, base, "pruned", opts) is loaded  # the same recipe: no second build
    # Rebuilt with other options, it is another model under another id: Chat's engine for the first one is not reused
    other = register_variant(services.manager, base, "pruned", replace(opts, sparsity=0.7))
    assert other.model_id.startswith(f"{variant_id(base.model_id, 'pruned')} #") and other.model_id != loaded.model_id
    runtimes = ChatRuntimes(services.manager)
    carried = Quality(pruned.top1_agreement, pruned.perplexity, fp32.perplexity, carried=figures)
    for variant, quality in ((loaded, carried), (other, None)):
        served = runtimes.serve(variant.model_id)
        assert served.loaded is variant and served.quality == quality
    # A comparison that measures the second build later: Chat's engine for it shows those figures from then on
    measured = replace(figures, agreement=0.5)
    assert register_variant(services.manager, base, "pruned", replace(opts, sparsity=0.7), measured) is other
    assert runtimes.serve(other.model_id).quality.carried == measured
    for served in runtimes.served():
        served.engine.close()


def _linear_zeros(model: nn.Module) -> int:
    """Zeroed weights of the model's own linear layers (LoRA adapters left out)."""
    return sum(int((p == 0).sum()) for name, p in model.named_parameters() if "lora_" not in name and p.dim() == 2
               and "embed" not in name and "wte" not in name and "wpe" not in name)


def test_healing_trains_adapters_and_pruned_weights_stay_zero(lm):
    from core.common.errors import StoppedError
    from core.quantize.healing import HealSettings, adapter_params, heal

    model, tok = lm
    opts = calibrated(CompressionOptions(sparsity=0.5), tok)
    ids = torch.tensor([opts.healing_ids])
    quick = HealSettings(steps=8, batch=2, window=32, learning_rate=1e-2)
    wanda = build_variant("wanda", model, opts).model
    zeros = _linear_zeros(wanda)
    healed, losses = heal(wanda, ids, quick)
    assert len(losses) == 8 and sum(losses[-3:]) / 3 < losses[0]  # the adapters learn the healing text
    assert adapter_params(healed) > 0 and _linear_zeros(healed) == zeros  # kept apart: the zeros survive
    with pytest.raises(InputError, match="more than 32 tokens"):
        heal(build_variant("wanda", model, opts).model, ids[:, :20], quick)
    stop = StopFlag()
    stop.stop()
    with pytest.raises(StoppedError):
        heal(build_variant("svd-llm", model, opts).model, ids, quick, stop)


def test_healed_rows_sit_beside_their_unhealed_twins_and_run_in_chat(services, tiny_lm_dirs):
    from core.chat.sampling import SamplingSettings
    from core.chat.serving import torch_engine

    folder = tiny_lm_dirs["llama"]
    model, tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    *_, comparison = compare_variants("tiny", CAUSAL_LM, model, tok, ["svd-llm", "svd-llm+lora"], TEXT,
                                      CompressionOptions(cut=0.3), FAST)
    rows = {r.variant: r for r in comparison.results}
    assert rows["svd-llm+lora"].status == "ok", rows["svd-llm+lora"].notes
    assert "healed with LoRA" in rows["svd-llm+lora"].notes and "sentiment_reviews" in rows["svd-llm+lora"].notes
    assert rows["svd-llm+lora"].perplexity != rows["svd-llm"].perplexity
    base = services.manager.load(str(folder), CAUSAL_LM, precision="fp32")
    loaded = register_variant(services.manager, base, "wanda+lora", CompressionOptions())
    prompt = tok("Hello there")["input_ids"]
    reply = torch_engine(loaded.model, loaded.tokenizer).submit(
        prompt, SamplingSettings(temperature=0, max_new_tokens=4)).result()
    assert reply.done and len(reply.steps) == 4


class StopsOnRead(StopFlag):
    """A Stop pressed while the n-th check runs: here, inside healing rather than between variants."""

    def __init__(self, reads: int) -> None:
        super().__init__()
        self.reads = reads

    @property
    def stopped(self) -> bool:
        self.reads -= 1
        return self.reads < 0


def test_stop_during_healing_ends_the_run_without_a_failed_row(tiny_lm_dirs):
    folder = tiny_lm_dirs["llama"]
    model, tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    stop = StopsOnRead(4)  # two checks between variants, then two healing steps
    results = [[r.variant for r in c.results] for c in compare_variants(
        "tiny", CAUSAL_LM, model, tok, ["wanda+lora", "bf16"], TEXT, settings=FAST, stop=stop)]
    assert results == [["fp32"]] and stop.reads < 0


def test_int8_dynamic_keeps_fp32_activations_where_one_scale_per_tensor_crushes_them(tiny_lm_dirs):
    from core.quantize.variants import FullRangeDynamicLinear, full_range_is_exact

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dirs["llama"]).eval()
    with torch.no_grad():  # one huge channel into layer 0's down_proj, as LLaMA's massive activations are
        model.model.layers[0].mlp.up_proj.weight[3] *= 2000
    tok = AutoTokenizer.from_pretrained(tiny_lm_dirs["llama"])
    built = build_variant("int8-dynamic", model, calibrated(CompressionOptions(), tok, TEXT))
    layers = built.model.model.layers
    assert isinstance(layers[0].mlp.down_proj, Int8WeightLinear) and "down_proj" in built.notes[0]
    dynamic = FullRangeDynamicLinear if full_range_is_exact() else torch.ao.nn.quantized.dynamic.Linear
    assert type(layers[1].mlp.gate_proj) is dynamic
    assert ("full 8 bits" if full_range_is_exact() else "7 bits") in " ".join(built.notes)
