"""Attention extraction, head average and rollout on tiny GPT-2 / LLaMA / Phi / Phi-3 / BERT models."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.explain.attention import (
    OVERVIEW_MAX_CELLS,
    AttentionMaps,
    AttentionUnavailable,
    ExplainInputError,
    FittedText,
    attention_rollout,
    explain_task,
    extract_attention,
    fit_text,
    load_for_explain,
    matrix_figure,
    overview_figure,
    view_figure,
)
from core.models.registry import CAUSAL_LM, DEFAULT_CHAT_MODEL, ENCODER, OFFLINE_ENCODER, TEXT_CLASSIFICATION
from core.models.store import CARD

TEXT = "The capital of France is Paris. The quick brown fox jumps over the lazy dog."


@pytest.mark.parametrize("family", ["gpt2", "llama", "phi", "phi3"])
def test_causal_lm_rows_sum_to_one_and_never_look_ahead(services, tiny_lm_dirs, family):
    loaded = load_for_explain(services.manager, str(tiny_lm_dirs[family]))
    assert loaded.task == CAUSAL_LM
    maps = extract_attention(loaded, TEXT, max_tokens=64)
    n = len(maps.tokens)
    assert maps.weights.shape == (2, loaded.model.config.num_attention_heads, n, n) and maps.causal
    np.testing.assert_allclose(maps.weights.sum(-1), 1.0, atol=1e-5)
    assert np.abs(np.triu(maps.weights, 1)).max() < 1e-6  # a causal LM never attends to later tokens
    np.testing.assert_allclose(maps.head_average(1).sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(maps.rollout().sum(-1), 1.0, atol=1e-6)
    assert "capital" in maps.tokens and "Paris" in maps.tokens


def test_bert_classifier_attention_is_bidirectional(services, tiny_classifier_dir):
    loaded = load_for_explain(services.manager, str(tiny_classifier_dir))
    assert loaded.task == TEXT_CLASSIFICATION
    maps = extract_attention(loaded, "I loved this movie", max_tokens=32)
    assert maps.tokens[0] == "[CLS]" and maps.tokens[-1] == "[SEP]" and not maps.causal
    np.testing.assert_allclose(maps.weights.sum(-1), 1.0, atol=1e-5)
    assert np.triu(maps.weights, 1).sum() > 0.1


def test_rollout_follows_abnar_zuidema():
    n = 3
    uniform = np.full((1, 2, n, n), 1 / n)
    expected = 0.5 * np.full((n, n), 1 / n) + 0.5 * np.eye(n)  # one layer: mixed with the residual, rows already sum to 1
    np.testing.assert_allclose(attention_rollout(uniform), expected)
    np.testing.assert_allclose(attention_rollout(np.concatenate([uniform, uniform])), expected @ expected)
    only_self = np.broadcast_to(np.eye(n), (4, 3, n, n))
    np.testing.assert_allclose(attention_rollout(only_self), np.eye(n))


def test_long_text_is_cut_with_a_notice(services, tiny_lm_dirs):
    loaded = load_for_explain(services.manager, str(tiny_lm_dirs["gpt2"]))
    maps = extract_attention(loaded, TEXT * 4, max_tokens=10)
    assert len(maps.tokens) == 10 and maps.fitted.truncated
    assert "only the first 10" in maps.fitted.notice()
    assert fit_text(loaded.tokenizer, "short", 10).notice() is None


@pytest.mark.parametrize("text", ["", "   \n "])
def test_empty_text_is_refused(services, tiny_lm_dirs, text):
    loaded = load_for_explain(services.manager, str(tiny_lm_dirs["gpt2"]))
    with pytest.raises(ExplainInputError, match="Type a sentence"):
        extract_attention(loaded, text)


def test_model_without_attention_weights_gets_a_clear_message(services, tiny_lm_dirs):
    sdpa = services.manager.load(str(tiny_lm_dirs["llama"]), CAUSAL_LM, precision="fp32", attn_implementation="sdpa")
    with pytest.raises(AttentionUnavailable, match="computes no attention weights"):
        extract_attention(sdpa, TEXT)


def test_bad_layer_or_head_is_refused(services, tiny_lm_dirs):
    maps = extract_attention(load_for_explain(services.manager, str(tiny_lm_dirs["phi"])), TEXT)
    with pytest.raises(ExplainInputError, match="layers 0-1"):
        view_figure(maps, "One head", 5, 0)


def test_task_comes_from_preset_card_or_config(services, tiny_lm_dirs, tmp_path):
    assert explain_task(services.manager, DEFAULT_CHAT_MODEL) == CAUSAL_LM
    assert explain_task(services.manager, OFFLINE_ENCODER) == ENCODER
    assert explain_task(services.manager, str(tiny_lm_dirs["phi3"])) == CAUSAL_LM
    (tmp_path / CARD).write_text(json.dumps({"name": "mine", "task": TEXT_CLASSIFICATION, "base_model": "x"}))
    assert explain_task(services.manager, str(tmp_path)) == TEXT_CLASSIFICATION


def _maps(layers: int, heads: int, n: int, causal: bool = True) -> AttentionMaps:
    weights = np.tril(np.ones((n, n))) if causal else np.ones((n, n))
    weights = np.broadcast_to(weights / weights.sum(-1, keepdims=True), (layers, heads, n, n))
    return AttentionMaps("m", [f"t{i}" for i in range(n)], weights, causal, FittedText("x", n, n))


def test_heatmap_hides_future_cells_and_hovers_exact_tokens():
    fig = matrix_figure(_maps(1, 1, 4), _maps(1, 1, 4).head(0, 0), "t")
    z = np.array(fig.data[0].z, dtype=float)
    assert np.isnan(z[0, 1]) and z[1, 0] == pytest.approx(0.5)
    assert fig.data[0].text[2][1] == "'t2' (#2) attends to 't1' (#1)"
    assert list(fig.layout.xaxis.ticktext) == ["t0", "t1", "t2", "t3"]


def test_overview_stays_light_for_big_models():
    big = _maps(30, 9, 128)  # SmolLM2's 30 x 9 heads at the token cap
    z = np.array(overview_figure(big).data[0].z, dtype=float)
    assert np.isfinite(z).sum() <= OVERVIEW_MAX_CELLS
    small = _maps(2, 2, 5, causal=False)
    assert np.isfinite(np.array(overview_figure(small).data[0].z, dtype=float)).sum() == 2 * 2 * 25
