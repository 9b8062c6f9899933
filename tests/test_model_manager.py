"""The shared ModelManager: resolution order, errors, caching, eviction, precision and threads."""
from __future__ import annotations

import threading
import time

import pytest
import torch

import core.models.precision as precision
from core.chat.sampling import SamplingSettings
from core.chat.serving import torch_engine
from core.models.device import configure_threads
from core.models.manager import LoadedModel, ModelLoadError, ModelManager
from core.models.registry import DEFAULT_CHAT_MODEL, OFFLINE_ENCODER


@pytest.fixture
def manager() -> ModelManager:
    return ModelManager(offline=True, memory_budget_bytes=2**30)


# ---- resolution ---------------------------------------------------------------------------------
def test_a_local_folder_wins_over_the_offline_package_and_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / DEFAULT_CHAT_MODEL).mkdir(parents=True)  # a folder that happens to be named like the offline id
    resolved = ModelManager(offline=False).resolve(DEFAULT_CHAT_MODEL)
    assert resolved.source == "local folder" and resolved.path == str((tmp_path / DEFAULT_CHAT_MODEL).resolve())


def test_offline_packages_come_before_the_hub():
    resolved = ModelManager(offline=False).resolve(OFFLINE_ENCODER)
    assert resolved.source == "offline package" and resolved.path != OFFLINE_ENCODER


def test_other_ids_go_to_the_hub_unless_offline():
    assert ModelManager(offline=False).resolve("someone/some-model").source == "hub"
    with pytest.raises(ModelLoadError, match="'someone/some-model': offline mode is on.*Offline choices: .*SmolLM2"):
        ModelManager(offline=True).resolve("someone/some-model")


@pytest.mark.parametrize("bad", ["not-a-model", "", "   "])
def test_unknown_ids_get_a_clear_message(bad):
    with pytest.raises(ModelLoadError) as err:
        ModelManager(offline=False).resolve(bad)
    assert (bad.strip() and f"'{bad}'" in str(err.value)) or "No model given" in str(err.value)


def test_a_hub_model_that_cannot_be_fetched_names_the_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # CI has no hub either way; never try the network here
    with pytest.raises(ModelLoadError, match="someone/does-not-exist.*Offline choices"):
        ModelManager(offline=False).load("someone/does-not-exist", precision="fp32")


# ---- caching and memory -------------------------------------------------------------------------
def test_one_copy_per_key(manager, tiny_lm_dirs):
    folder = str(tiny_lm_dirs["gpt2"])
    first = manager.load(folder, precision="fp32")
    assert manager.load(folder, precision="fp32") is first
    half = manager.load(folder, precision="bf16")
    assert half is not first and next(half.model.parameters()).dtype == torch.bfloat16
    assert next(first.model.parameters()).dtype == torch.float32
    assert "fp32 on cpu" in first.describe() and "from local folder" in first.describe()


def test_concurrent_loads_of_one_key_load_once(manager, tiny_lm_dirs, monkeypatch):
    calls = []
    original = ModelManager._load_uncached

    def slow_load(self, *args):
        calls.append(1)
        time.sleep(0.2)  # both threads arrive while the first load is still running
        return original(self, *args)

    monkeypatch.setattr(ModelManager, "_load_uncached", slow_load)
    results = []
    threads = [threading.Thread(target=lambda: results.append(manager.load(str(tiny_lm_dirs["llama"]), precision="fp32")))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results[0] is results[1]


def test_least_recently_used_models_are_evicted_under_the_budget(tiny_lm_dirs):
    gpt2, llama, phi = (str(tiny_lm_dirs[f]) for f in ("gpt2", "llama", "phi"))
    sizes = {f: ModelManager(offline=True).load(f, precision="fp32").nbytes for f in (gpt2, llama, phi)}
    # room for gpt2 and phi together, not for all three
    small = ModelManager(offline=True, memory_budget_bytes=sizes[gpt2] + sizes[phi] + sizes[llama] // 2)
    small.load(gpt2, precision="fp32")
    small.load(llama, precision="fp32")
    small.load(gpt2, precision="fp32")  # gpt2 is now the most recently used
    small.load(phi, precision="fp32")
    kept = {m.model_id for m in small.loaded()}
    assert gpt2 in kept and phi in kept and llama not in kept
    assert sum(m.nbytes for m in small.loaded()) <= small.memory_budget


def test_other_objects_share_the_cache(manager):
    made = []
    first = manager.get_or_create("thing", lambda: made.append(1) or object(), nbytes=10)
    assert manager.get_or_create("thing", lambda: made.append(1) or object()) is first and made == [1]
    tight = ModelManager(offline=True, memory_budget_bytes=100)
    tight.get_or_create("a", object, nbytes=60)
    tight.get_or_create("b", object, nbytes=60)
    assert list(tight._custom) == ["b"]


def test_registered_variants_load_by_id(manager, tiny_lm_dirs):
    base = manager.load(str(tiny_lm_dirs["llama"]), precision="fp32")
    variant = LoadedModel("llama-int8-variant", base.task, "memory", base.path, base.model, base.tokenizer, "cpu",
                          "int8-dynamic", base.is_chat, 0.0, base.nbytes)
    manager.register(variant)
    assert manager.load("llama-int8-variant") is variant
    manager.unload("llama-int8-variant")
    with pytest.raises(ModelLoadError):
        manager.load("llama-int8-variant")


# ---- precision and threads ----------------------------------------------------------------------
def test_int8_dynamic_quantizes_linear_layers(manager, tiny_lm_dirs):
    loaded = manager.load(str(tiny_lm_dirs["llama"]), precision="int8-dynamic")
    quantized = [m for m in loaded.model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert quantized and loaded.precision == "int8-dynamic"
    assert loaded.nbytes < manager.load(str(tiny_lm_dirs["llama"]), precision="fp32").nbytes


@pytest.mark.parametrize("precision_name", ["int8-dynamic", "fp16-weight"])
def test_dynamic_precisions_pack_gpt2_conv1d_blocks_not_only_the_head(manager, tiny_lm_dirs, precision_name):
    loaded = manager.load(str(tiny_lm_dirs["gpt2"]), precision=precision_name)
    packed = {n for n, m in loaded.model.named_modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)}
    assert {"transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_proj", "lm_head"} <= packed


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_int8_weight_only_keeps_greedy_output_close_to_fp32(manager, tiny_lm_dirs, family):
    fp32 = manager.load(str(tiny_lm_dirs[family]), precision="fp32")
    int8 = manager.load(str(tiny_lm_dirs[family]), precision="int8-weight")
    swapped = [m for m in int8.model.modules() if isinstance(m, precision.Int8WeightLinear)]
    assert swapped  # nn.Linear (llama) and GPT-2's Conv1D are both converted
    assert int8.nbytes < 0.6 * fp32.nbytes
    ids = precision.probe_ids(fp32.tokenizer)
    with torch.no_grad():
        reference = fp32.model(input_ids=ids).logits
        logits = int8.model(input_ids=ids).logits
    assert logits.dtype == torch.float32 and torch.allclose(logits, reference, atol=0.05 * reference.abs().max().item())


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_fp16_weight_replies_like_fp32_in_half_the_linear_bytes(manager, tiny_lm_dirs, family):
    fp32 = manager.load(str(tiny_lm_dirs[family]), precision="fp32")
    half = manager.load(str(tiny_lm_dirs[family]), precision="fp16-weight")
    packed = [m for m in half.model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert packed and all(m._packed_params.dtype == torch.float16 for m in packed)  # Conv1D (gpt2) included
    # Each fp32 weight becomes a 2-byte packed one; a tied lm_head gets its own fp16 copy beside the fp32 table.
    embeddings = {id(m.weight) for m in fp32.model.modules() if isinstance(m, torch.nn.Embedding)}
    change = sum((2 if id(m.weight) in embeddings else -2) * m.weight.numel() for m in fp32.model.modules()
                 if type(m).__name__ in ("Linear", "Conv1D"))
    assert half.nbytes == fp32.nbytes + change < fp32.nbytes
    prompt = fp32.tokenizer("The history of France", return_tensors="pt").input_ids[0].tolist()
    settings = SamplingSettings(temperature=0, max_new_tokens=12)
    assert torch_engine(half.model, half.tokenizer).submit(prompt, settings).result().text == \
        torch_engine(fp32.model, fp32.tokenizer).submit(prompt, settings).result().text


def test_int8_weight_linear_matches_the_float_layer_and_skips_odd_widths():
    layer = torch.nn.Linear(64, 40)
    x = torch.randn(3, 5, 64)
    quantized = precision.Int8WeightLinear(layer.weight, layer.bias)
    with torch.no_grad():
        assert torch.allclose(quantized(x), layer(x), atol=0.05)
    odd = torch.nn.Sequential(torch.nn.Linear(63, 8))
    assert isinstance(precision.apply_precision(odd, "int8-weight")[0], torch.nn.Linear)


def test_auto_precision_picks_the_fastest_faithful_one_and_remembers_it(tmp_path, monkeypatch, tiny_lm_dirs):
    monkeypatch.setenv("LLMPG_HOME", str(tmp_path))
    measured = []
    fake = {"fp32": precision.Measurement(0.3, 0.040, 1.0), "bf16": precision.Measurement(0.3, 0.020, 0.99),
            "int8-dynamic": precision.Measurement(0.3, 0.010, 0.5)}  # int8 is fastest but changes half the predictions
    monkeypatch.setattr(precision, "measure_cpu_precisions",
                        lambda model, ids, free_bytes=None: (measured.append(ids), (fake, {}))[1])
    loaded = ModelManager(offline=True).load(str(tiny_lm_dirs["phi"]))
    assert loaded.precision == "bf16" and next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.precision_measured == fake
    assert ModelManager(offline=True).load(str(tiny_lm_dirs["phi"])).precision == "bf16"
    assert len(measured) == 1 and (tmp_path / "precision_choices.json").exists()
    assert measured[0].shape[1] > 20  # predictions are compared on real text, tokenized by the model's tokenizer


M = precision.Measurement


@pytest.mark.parametrize("measured, best", [
    ({"fp32": M(0.2, 0.060, 1.0), "bf16": M(0.2, 0.040, 0.99), "int8-dynamic": M(0.2, 0.020, 0.4),
      "int8-weight": M(0.2, 0.030, 0.96)}, "int8-weight"),  # int8-dynamic fastest but unfaithful
    ({"fp32": M(0.2, 0.060, 1.0), "bf16": M(0.2, 0.040, 0.99), "int8-dynamic": M(0.2, 0.020, 0.97)}, "int8-dynamic"),
    ({"fp32": M(0.2, 0.060, 1.0), "bf16": M(0.2, 0.059, 1.0)}, "fp32"),  # within timing noise of fp32: keep fp32
    ({"fp32": M(0.2, 0.060, 1.0), "bf16": M(0.2, 0.010, 0.2)}, "fp32"),
    # bf16 decodes fastest but reads prompts 5x slower (AVX2 without native bf16): the whole turn decides
    ({"fp32": M(0.19, 0.065, 1.0), "bf16": M(0.70, 0.037, 0.99), "fp16-weight": M(0.13, 0.040, 1.0)}, "fp16-weight"),
])
def test_pick_the_fastest_turn_that_keeps_predictions(measured, best):
    assert precision.pick(measured) == best


def test_real_measurement_covers_every_cpu_candidate(tiny_lm_dirs):
    loaded = ModelManager(offline=True).load(str(tiny_lm_dirs["llama"]), precision="fp32")
    measured, skipped = precision.measure_cpu_precisions(loaded.model, precision.probe_ids(loaded.tokenizer))
    assert set(measured) == set(precision.CPU_CANDIDATES) and skipped == {}
    assert all(m.prefill_s > 0 and m.token_s > 0 for m in measured.values())
    assert measured["fp32"].agreement == 1.0 and all(0 <= m.agreement <= 1 for m in measured.values())
    assert next(loaded.model.parameters()).dtype == torch.float32  # candidates are measured on copies


def test_candidates_that_would_not_fit_are_skipped_and_said(tiny_lm_dirs):
    loaded = ModelManager(offline=True).load(str(tiny_lm_dirs["llama"]), precision="fp32")
    fp32_bytes = precision.copy_bytes(loaded.model, "fp32")
    # room for one plain copy, not for quantize_dynamic's two
    measured, skipped = precision.measure_cpu_precisions(loaded.model, precision.probe_ids(loaded.tokenizer), rounds=1,
                                                         free_bytes=lambda: int(fp32_bytes * 1.5))
    assert set(skipped) == {"fp16-weight"} and "GiB free" in skipped["fp16-weight"]
    assert set(measured) == {"fp32", "bf16", "int8-weight"}


def test_thread_count_follows_the_setting(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1 == torch.get_num_threads()
        monkeypatch.setenv("LLMPG_THREADS", "2")
        assert configure_threads() == 2
    finally:
        torch.set_num_threads(before)
