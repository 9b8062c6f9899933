"""SHAP attributions: models whose output hangs on one known token must give that token the largest attribution."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, PretrainedConfig

from core.common.errors import StoppedError
from core.common.stopping import StopFlag
from core.explain.attention import load_for_explain
from core.explain.shap_attribution import (
    MAX_TARGET_TOKENS,
    attribution_bar_figure,
    attribution_html,
    class_log_odds,
    continuation_log_probs,
    explain_classifier,
    explain_continuation,
)
from core.models.manager import LoadedModel
from core.models.registry import CAUSAL_LM, TEXT_CLASSIFICATION


class KeyTokenClassifier(torch.nn.Module):
    """Two classes; the "positive" logit is 4 when the key token is in the text, else -4. Nothing else matters."""

    def __init__(self, key_id: int):
        super().__init__()
        self.key_id = key_id
        self.strength = torch.nn.Parameter(torch.tensor(4.0))
        self.config = PretrainedConfig(id2label={0: "negative", 1: "positive"})

    def forward(self, input_ids, attention_mask=None, **_):
        present = ((input_ids == self.key_id) & attention_mask.bool()).any(-1).float()
        positive = self.strength * (2 * present - 1)
        return SimpleNamespace(logits=torch.stack([torch.zeros_like(positive), positive], -1))


class KeyTokenLM(torch.nn.Module):
    """Next-token logits favour `target` by 6 once the key token has been read; uniform otherwise."""

    def __init__(self, key_id: int, target: int, vocab: int):
        super().__init__()
        self.key_id, self.target, self.vocab = key_id, target, vocab
        self.strength = torch.nn.Parameter(torch.tensor(6.0))
        self.config = PretrainedConfig()

    def forward(self, input_ids, attention_mask=None, **_):
        seen = torch.cummax((input_ids == self.key_id).float(), dim=1).values
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.target] = self.strength * seen
        return SimpleNamespace(logits=logits)


def _loaded(model, tokenizer, task) -> LoadedModel:
    return LoadedModel("hand-made", task, "memory", "", model, tokenizer, "cpu", "fp32", False, 0.0, 0)


@pytest.fixture(scope="module")
def bert_tokenizer(tiny_classifier_dir):
    return AutoTokenizer.from_pretrained(tiny_classifier_dir)


def test_classifier_shap_finds_the_token_that_drives_the_logit(bert_tokenizer):
    key = bert_tokenizer.convert_tokens_to_ids("wonderful")
    loaded = _loaded(KeyTokenClassifier(key), bert_tokenizer, TEXT_CLASSIFICATION)
    text = "The plot was slow but the music was wonderful and the actors were fine"
    attribution = explain_classifier(loaded, text, max_evals=200)
    positive = attribution.output_names.index("positive")
    position, token, value = attribution.strongest(positive, 1)[0]
    assert token.strip() == "wonderful" and value > 1.0
    others = np.delete(attribution.values[:, positive], position)
    assert np.abs(others).max() < 0.05 * value
    assert attribution.default_output == positive  # the prediction on the full text
    # Owen values are exact: base value + contributions = the model's output on the full text
    full = class_log_odds(loaded, [text])[0]
    np.testing.assert_allclose(attribution.base_values + attribution.values.sum(0), full, atol=1e-6)
    assert 0 < attribution.model_evals <= 200 and attribution.batches >= 1 and attribution.seconds > 0


def test_language_model_shap_finds_the_prompt_token_behind_the_continuation(tiny_lm_dirs):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dirs["gpt2"])
    key = tokenizer(" France", add_special_tokens=False)["input_ids"]
    target = tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    assert len(key) == 1 and len(target) == 1
    loaded = _loaded(KeyTokenLM(key[0], target[0], len(tokenizer)), tokenizer, CAUSAL_LM)
    attribution, notice = explain_continuation(loaded, "The capital of France is", "Paris", max_evals=100)
    assert notice is None and attribution.output_names == ["#1 ' Paris'"]
    _position, token, value = attribution.strongest(0, 1)[0]
    assert token.strip() == "France" and value > 1.0
    assert sorted(abs(v) for _p, _t, v in attribution.strongest(0, 5))[-2] < 0.05 * value


def test_continuation_scores_are_teacher_forced_log_probs(services, tiny_lm_dirs):
    loaded = load_for_explain(services.manager, str(tiny_lm_dirs["gpt2"]))
    ids = loaded.tokenizer(" Paris and Lyon", add_special_tokens=False)["input_ids"]
    prompts = ["The capital of France is", "The ... is", "..."]
    scores = continuation_log_probs(loaded, prompts, ids)
    assert scores.shape == (3, 1 + len(ids))
    np.testing.assert_allclose(scores[:, 0], scores[:, 1:].sum(1))
    # the first prompt alone, unpadded, gives the same numbers as inside the padded batch
    full = loaded.tokenizer(prompts[0] + " Paris and Lyon", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        log_probs = torch.log_softmax(loaded.model(input_ids=full).logits[0], -1)
    start = full.shape[1] - len(ids) - 1
    expected = [log_probs[start + k, t].item() for k, t in enumerate(ids)]
    np.testing.assert_allclose(scores[0, 1:], expected, atol=1e-4)


def test_language_model_continuation_choices(services, tiny_lm_dirs):
    loaded = load_for_explain(services.manager, str(tiny_lm_dirs["llama"]))
    many, _ = explain_continuation(loaded, "The capital of France is", "Paris and Lyon", max_evals=40)
    assert many.output_names[0] == "whole continuation" and many.output_names[1] == "#1 ' Paris'"
    np.testing.assert_allclose(many.values[:, 0], many.values[:, 1:].sum(1), atol=1e-9)
    nxt, _ = explain_continuation(loaded, "The capital of France is", "", max_evals=40)
    assert len(nxt.output_names) == 1 and nxt.values.shape == (len(nxt.tokens), 1)
    _, notice = explain_continuation(loaded, "Hello", "the " * 40, max_evals=20)
    assert f"only the first {MAX_TARGET_TOKENS}" in notice


def test_real_bert_is_exact_and_stays_in_budget(services, tiny_classifier_dir):
    loaded = load_for_explain(services.manager, str(tiny_classifier_dir))
    text = "I loved this movie <script>alert(1)</script> & it was wonderful"
    attribution = explain_classifier(loaded, text, max_evals=60)
    assert attribution.model_evals <= 60
    # exact up to float32 noise: the masked texts were scored in padded batches, the full text alone
    np.testing.assert_allclose(attribution.base_values + attribution.values.sum(0), class_log_odds(loaded, [text])[0],
                               atol=1e-4)
    page = attribution_html(attribution, 1)
    assert "<script>" not in page and "&lt;" in page and "&amp;" in page
    bars = attribution_bar_figure(attribution, 1, k=5)
    assert len(bars.data[0].x) == 5 and len(set(bars.data[0].y)) == 5


def test_stop_flag_ends_shap(services, tiny_classifier_dir):
    loaded = load_for_explain(services.manager, str(tiny_classifier_dir))
    flag = StopFlag()
    flag.stop()
    with pytest.raises(StoppedError, match="Stopped after 0"):
        explain_classifier(loaded, "I loved this movie", max_evals=50, stop=flag)


def test_wrong_model_kind_and_tiny_budget_are_refused(services, tiny_classifier_dir, tiny_lm_dirs):
    classifier = load_for_explain(services.manager, str(tiny_classifier_dir))
    with pytest.raises(ValueError, match="not a causal language model"):
        explain_continuation(classifier, "Hello there")
    lm = load_for_explain(services.manager, str(tiny_lm_dirs["gpt2"]))
    with pytest.raises(ValueError, match="not a text classifier"):
        explain_classifier(lm, "Hello there")
    with pytest.raises(ValueError, match="at least 10"):
        explain_classifier(classifier, "Hello there", max_evals=3)
