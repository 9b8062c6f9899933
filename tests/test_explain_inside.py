"""Logit lens, activation patching and contrastive attribution on tiny random GPT-2 / LLaMA / Phi / Phi-3 models:
each checked against what it must equal (the model's own output, the clean and corrupted runs, the slow loop, the
difference of two attributions), plus the messages for bad input and the example pairs on the real SmolLM2."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from core.common.errors import InputError, StoppedError
from core.common.stopping import StopFlag
from core.explain.attention import ExplainInputError, load_for_explain
from core.explain.contrastive import contrast_gradient, contrast_inputs, contrast_shap
from core.explain.examples import EXAMPLES
from core.explain.lens import LENS_MAX_TOKENS, logit_lens, residual_states
from core.explain.methods import ContrastRequest
from core.explain.patching import Tracer, naive_sweep, patching_pair, patching_sweep
from core.explain.residual import ATTN, MLP, RESID, decoder_parts, hooked
from core.models.registry import DEFAULT_CHAT_MODEL

FAMILIES = ["gpt2", "llama", "phi", "phi3"]
# One-token words of the tiny models' tokenizer (trained on tests/tiny_models.CORPUS).
CLEAN = "The quick brown fox jumps over the lazy dog. The capital of France is"
CORRUPTED = "The quick brown dog jumps over the lazy fox. The capital of movie is"
TARGET, FOIL = "Paris", "dog"


@pytest.fixture(scope="module")
def lms(services, tiny_lm_dirs, one_torch_thread):
    """family -> the tiny model as these views load it (default attention kernel)."""
    return {f: load_for_explain(services.manager, str(tiny_lm_dirs[f]), attentions=False) for f in FAMILIES}


def _tracer(loaded, sites=(RESID,)) -> Tracer:
    return Tracer(loaded, patching_pair(loaded, CLEAN, CORRUPTED, TARGET, FOIL), sites)


# ---- logit lens ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_lens_at_the_last_layer_is_the_models_own_output(lms, family):
    loaded = lms[family]
    ids = loaded.tokenizer(CLEAN, return_tensors="pt")["input_ids"]
    parts = decoder_parts(loaded.model)
    states, _ = residual_states(loaded.model, parts, ids)
    with torch.no_grad():
        own = torch.softmax(loaded.model(input_ids=ids).logits[0].float(), -1)
        lens = torch.softmax(parts.logits(states[-1]), -1)
    assert states.shape[0] == loaded.model.config.num_hidden_layers + 1  # the embeddings, then every layer
    torch.testing.assert_close(lens, own, atol=1e-4, rtol=0)

    result = logit_lens(loaded, CLEAN, "Paris, dog")
    np.testing.assert_allclose(result.top_probs[-1, :, 0], own.max(-1).values.numpy(), atol=1e-4)
    assert (result.top_ids[-1, :, 0] == own.argmax(-1).numpy()).all()
    assert (result.prediction.rank[-1] == 1).all() and result.settles_at(result.n_positions - 1) <= result.n_rows - 1
    entropy = -(own * own.log()).sum(-1) / np.log(2)
    np.testing.assert_allclose(result.entropy[-1], entropy.numpy(), atol=1e-3)
    paris = loaded.tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    np.testing.assert_allclose(result.followed[0].prob[-1], own[:, paris].numpy(), atol=1e-5)
    rank = (own > own[:, paris:paris + 1]).sum(-1) + 1
    assert (result.followed[0].rank[-1] == rank.numpy()).all()
    assert result.row_names[0] == "embeddings" and result.top(result.n_rows - 1, 0)[0][2] == int(own[0].argmax())


def test_lens_follows_the_first_token_of_a_long_word_with_a_notice(lms):
    result = logit_lens(lms["llama"], CLEAN, "London, Paris")
    assert "first token" in result.notices[0] and [t.label for t in result.followed][1] == " Paris"
    with pytest.raises(ExplainInputError, match="rows 0-2"):
        result.top(3, 0)


# ---- activation patching -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_patching_a_whole_layer_gives_the_clean_output_and_nothing_the_corrupted(lms, family):
    tracer = _tracer(lms[family])
    with torch.no_grad():
        clean = tracer.next_logits(tracer.clean.tensor("cpu"))[0]
        corrupted = tracer.next_logits(tracer.corrupted.tensor("cpu"))[0]
    whole_layers = [[(layer, p) for p in range(tracer.n_positions)] for layer in range(tracer.n_layers)]
    logits = tracer.patched(RESID, [[], *whole_layers])
    torch.testing.assert_close(logits[0], corrupted, atol=1e-5, rtol=0)
    for row in logits[1:]:
        torch.testing.assert_close(row, clean, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("eager", [False, True], ids=["sdpa", "eager"])
def test_batched_sweep_equals_the_one_run_per_cell_loop(services, tiny_lm_dirs, lms, family, eager):
    loaded = load_for_explain(services.manager, str(tiny_lm_dirs[family])) if eager else lms[family]
    tracer = _tracer(loaded, (RESID, ATTN, MLP))
    result = patching_sweep(tracer, batch_rows=5)  # batches that span layers and start at different ones
    assert result.runs == 3 * tracer.n_layers * (tracer.n_positions - tracer.first_diff) and result.batches > 3
    for site in (RESID, ATTN, MLP):
        np.testing.assert_allclose(result.restored[site], naive_sweep(tracer, site), atol=1e-4)
    assert np.allclose(result.restored[RESID][-1, -1], 1.0, atol=1e-4)  # the last layer's output at the end is the output
    assert (result.restored[RESID][:, :tracer.first_diff] == 0).all()


def test_stop_ends_a_sweep_between_batches(lms):
    flag = StopFlag()
    with pytest.raises(StoppedError, match=r"Stopped after 4 of \d+ patched runs"):
        patching_sweep(_tracer(lms["gpt2"]), flag, lambda fraction, message: flag.stop(), batch_rows=4)


def test_hooks_act_only_in_the_thread_that_installed_them(lms):
    """The model is shared: a user's patching hook must not reach another user's forward pass."""
    loaded = lms["llama"]
    ids = loaded.tokenizer(CLEAN, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = loaded.model(input_ids=ids).logits
    seen = {}

    def other_user():
        with torch.no_grad():
            seen["logits"] = loaded.model(input_ids=ids).logits

    with hooked(decoder_parts(loaded.model).layers, lambda _i, hidden: hidden.zero_()):
        worker = threading.Thread(target=other_user)
        worker.start()
        worker.join()
    torch.testing.assert_close(seen["logits"], expected)


@pytest.mark.parametrize("clean, corrupted, target, foil, message", [
    (CLEAN, "The capital of France is", TARGET, FOIL, r"clean prompt is \d+ tokens and the corrupted prompt 5"),
    (CLEAN, CLEAN, TARGET, FOIL, "are the same: change a few words"),
    (CLEAN, CORRUPTED, "London", FOIL, r"clean answer ' London' is \d+ tokens"),
    (CLEAN, CORRUPTED, TARGET, "", "Type the corrupted answer"),
    (CLEAN, CORRUPTED, TARGET, TARGET, "are the same token"),
    ("", CORRUPTED, TARGET, FOIL, "Type a clean prompt"),
    (CLEAN * 10, CORRUPTED * 10, TARGET, FOIL, r"clean prompt has \d+ tokens; this view takes at most 48"),
])
def test_bad_pairs_get_a_message_naming_the_field(lms, clean, corrupted, target, foil, message):
    with pytest.raises(ExplainInputError, match=message):
        patching_pair(lms["phi"], clean, corrupted, target, foil)


def test_classifiers_and_long_prompts_are_refused(services, tiny_classifier_dir, lms):
    classifier = load_for_explain(services.manager, str(tiny_classifier_dir), attentions=False)
    for run in (lambda: logit_lens(classifier, "I loved it"),
                lambda: patching_pair(classifier, "I loved it", "I hated it", "good", "bad"),
                lambda: contrast_inputs(classifier, "I loved it", "good", "bad")):
        with pytest.raises(ExplainInputError, match="is a text classifier"):
            run()
    with pytest.raises(ExplainInputError, match=f"at most {LENS_MAX_TOKENS}"):
        logit_lens(lms["gpt2"], CLEAN * 8)


# ---- contrastive attribution ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_contrast_is_the_difference_of_the_two_attributions(lms, family):
    loaded = lms[family]
    result = contrast_gradient(loaded, contrast_inputs(loaded, CLEAN, TARGET, FOIL))
    values = result.attribution.values
    np.testing.assert_allclose(values[:, 0], values[:, 1] - values[:, 2], atol=1e-5)
    assert "".join(result.attribution.tokens) == CLEAN and result.attribution.output_names[0] == "' Paris' − ' dog'"
    with torch.no_grad():
        log_p = torch.log_softmax(loaded.model(**loaded.tokenizer(CLEAN, return_tensors="pt")).logits[0, -1].float(), -1)
    ids = [loaded.tokenizer(f" {w}", add_special_tokens=False)["input_ids"][0] for w in (TARGET, FOIL)]
    assert result.difference == pytest.approx(float(log_p[ids[0]] - log_p[ids[1]]), abs=1e-5)
    assert next(p.grad for p in loaded.model.parameters()) is None  # the shared model keeps no gradients


def test_shap_contrast_is_linear_and_adds_up(lms):
    loaded = lms["gpt2"]
    result = contrast_shap(loaded, contrast_inputs(loaded, CLEAN, TARGET, FOIL), max_evals=80)
    values, base = result.attribution.values, result.attribution.base_values
    np.testing.assert_allclose(values[:, 0], values[:, 1] - values[:, 2], atol=1e-9)
    assert base[0] + values[:, 0].sum() == pytest.approx(result.difference, abs=1e-5)
    assert "add up" in result.caveat and "= the full prompt's difference" in result.completeness()


def test_contrast_requests_check_method_budget_and_answers(lms):
    with pytest.raises(ExplainInputError, match="Unknown method"):
        ContrastRequest(CLEAN, TARGET, FOIL, "lime")
    with pytest.raises(InputError, match="SHAP budget must be between"):
        ContrastRequest(CLEAN, TARGET, FOIL, "shap", 1)
    with pytest.raises(ExplainInputError, match="target and the foil are the same token"):
        ContrastRequest(CLEAN, TARGET, " Paris").inputs(lms["llama"])
    with pytest.raises(ExplainInputError, match=r"The foil ' London' is \d+ tokens"):
        ContrastRequest(CLEAN, TARGET, "London").inputs(lms["llama"])


# ---- the example pairs on the model they were written for ----------------------------------------------------------
@pytest.mark.real_model
def test_examples_work_on_the_packaged_smollm2(services):
    loaded = load_for_explain(services.manager, DEFAULT_CHAT_MODEL, attentions=False)
    for name, example in EXAMPLES.items():
        tracer = Tracer(loaded, patching_pair(loaded, example.clean, example.corrupted, example.target, example.foil))
        clean, corrupted = (float(tracer.logit_diff(x)) for x in (tracer.clean_logits, tracer.corrupted_logits))
        assert clean > 1 and corrupted < -1, name  # each prompt prefers its own answer
        contrast_inputs(loaded, example.clean, example.target, example.foil)
