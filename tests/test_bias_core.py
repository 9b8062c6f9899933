"""Bias probes on tiny random models: likelihood scoring, counterfactuals, pairs, generation, fairness, report."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from fairlearn.metrics import demographic_parity_difference, demographic_parity_ratio, equalized_odds_difference
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from core.bias import counterfactual, crows_pairs, fairness, generation_probe
from core.bias.likelihood import encode_sentences, prefix_token_id, sentence_logprobs
from core.bias.report import report_html, report_json, write_report
from core.bias.stats import bootstrap_mean, bootstrap_statistic
from core.common.errors import StoppedError
from core.common.stopping import StopFlag
from core.common.uploads import UploadError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lms(tiny_lm_dirs):
    return {f: (AutoModelForCausalLM.from_pretrained(tiny_lm_dirs[f]).eval(), AutoTokenizer.from_pretrained(tiny_lm_dirs[f]))
            for f in ("gpt2", "llama")}


@pytest.fixture(scope="module")
def classifier(tiny_classifier_dir):
    return (AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir).eval(),
            AutoTokenizer.from_pretrained(tiny_classifier_dir))


SENTENCES = ["The woman worked as a nurse.", "Hi", "The capital of France is Paris and the fox jumps.", "I loved it"]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_batched_logprobs_equal_one_by_one_and_by_hand(lms, family):
    model, tok = lms[family]
    batched = sentence_logprobs(model, tok, SENTENCES, batch_size=4)
    single = sentence_logprobs(model, tok, SENTENCES, batch_size=1)
    np.testing.assert_allclose(batched, single, atol=1e-4)
    ids = torch.tensor([encode_sentences(tok, [SENTENCES[0]])[0]])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
    by_hand = logp.gather(-1, ids[0, 1:, None]).sum().item()
    assert batched[0] == pytest.approx(by_hand, abs=1e-3)
    assert (batched < 0).all()


def test_first_token_conditioned_on_bos_else_eos(lms):
    _, tok = lms["llama"]
    assert encode_sentences(tok, ["Hi"])[0][0] == tok.bos_token_id
    assert tok("Hi", add_special_tokens=False)["input_ids"] == encode_sentences(tok, ["Hi"])[0][1:]
    tok.bos_token = None
    try:
        assert prefix_token_id(tok) == tok.eos_token_id
    finally:
        tok.bos_token = "<|endoftext|>"


def test_stop_flag_ends_scoring(lms):
    flag = StopFlag()
    flag.stop()
    with pytest.raises(StoppedError):
        sentence_logprobs(*lms["gpt2"], SENTENCES, stop=flag)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    values = np.array([1, 0, 1, 1, 0, 1, 1, 0] * 5, dtype=float)
    a, b = bootstrap_mean(values, 300, seed=3), bootstrap_mean(values, 300, seed=3)
    assert a == b and a.estimate == pytest.approx(0.625) and a.low <= a.estimate <= a.high and a.high - a.low > 0.05
    ptp = bootstrap_statistic(lambda rows: float(values[rows].sum()), len(values), resamples=50)
    assert ptp.estimate == values.sum()


def test_template_parsing_and_expansion():
    assert counterfactual.parse_groups("gender: woman, man, woman\n\nage: old, young") == {
        "gender": ["woman", "man"], "age": ["old", "young"]}
    with pytest.raises(ValueError, match="at least two"):
        counterfactual.parse_groups("gender: woman")
    with pytest.raises(ValueError, match="slot"):
        counterfactual.parse_templates("No slot here.")
    frame = counterfactual.expand(["{group} is here.", "I met a {group}."], {"g": ["woman", "man"], "a": ["old", "young"]})
    assert len(frame) == 8 and frame["text"].iloc[0] == "Woman is here." and "I met a young." in set(frame["text"])
    assert counterfactual.load_groups().keys() >= {"gender", "race/ethnicity", "religion", "nationality", "age", "disability"}
    assert len(counterfactual.load_templates()) >= 10


def test_counterfactual_summary_by_hand():
    variants = pd.DataFrame({"template_id": [0, 0, 1, 1], "template": ["t0", "t0", "t1", "t1"], "axis": "g",
                             "group": ["a", "b", "a", "b"], "text": list("wxyz"), "score": [0.9, 0.2, 0.6, 0.7],
                             "predicted": ["pos", "neg", "pos", "pos"], "loglik": [-10.0, -12.0, -8.0, -9.0]})
    result = counterfactual.summarize(variants, "pos", resamples=200)
    axis = result.axes.iloc[0]
    assert axis["score_gap"] == pytest.approx(0.75 - 0.45) and axis["score_highest"] == "a"
    assert axis["flip_share"] == 0.5 and axis["loglik_gap"] == pytest.approx(1.5)
    means = result.groups.set_index(["measure", "group"])["mean"]
    assert means["score", "b"] == pytest.approx(0.45) and means["loglik", "a"] == pytest.approx(-9.0)


def test_counterfactual_on_tiny_models(lms, classifier):
    groups = {"gender": ["woman", "man"], "religion": ["Muslim", "Christian", "Jewish person"]}
    result = counterfactual.run_counterfactual(counterfactual.load_templates()[:3], groups, classifier, lms["llama"],
                                               resamples=100)
    assert len(result.variants) == 15 and result.score_label == "positive"
    assert set(result.axes["axis"]) == set(groups) and result.axes["flip_share"].between(0, 1).all()
    assert (result.variants["loglik"] < 0).all() and result.variants["score"].between(0, 1).all()
    section = counterfactual.to_section(result, {"classifier": "c", "language model": "l"}, {}, 0)
    assert len(section.figures) == 2 and len(section.notes) == 4
    with pytest.raises(ValueError, match="classifier"):
        counterfactual.run_counterfactual(["The {group}."], groups)


def test_crows_share_and_intervals_by_hand():
    scored = pd.DataFrame({"bias_type": ["gender"] * 4 + ["age"] * 2, "diff": [1.0, 2.0, -1.0, 3.0, -1.0, -2.0]})
    scored["prefers_more"] = scored["diff"] > 0
    table = crows_pairs.summarize(scored, resamples=200).by_type.set_index("bias_type")
    assert table.loc["overall", "pct_stereotype"] == pytest.approx(50.0)
    assert table.loc["gender", "pct_stereotype"] == pytest.approx(75.0) and table.loc["age", "pct_stereotype"] == 0
    assert table.loc["overall", "low"] < 50 < table.loc["overall", "high"]


def test_crows_on_tiny_lm_and_bad_uploads(lms, tmp_path):
    pairs, dropped = crows_pairs.load_pairs()
    assert len(pairs) >= 30 and dropped == 0 and pairs["bias_type"].nunique() >= 6
    result = crows_pairs.run_crows(pairs, *lms["gpt2"], batch_size=16, resamples=100)
    overall = result.by_type.iloc[0]
    assert overall.bias_type == "overall" and overall.pairs == len(pairs)
    manual = sentence_logprobs(*lms["gpt2"], [pairs.sent_more[0], pairs.sent_less[0]], batch_size=1)
    assert result.pairs["diff"][0] == pytest.approx(manual[0] - manual[1], abs=1e-3)
    section = crows_pairs.to_section(result, {"language model": "tiny"}, {}, 0)
    assert [f.data[0].type for f in section.figures] == ["bar", "histogram"]
    bad = tmp_path / "bad.csv"
    bad.write_text("sent_more,sent_less\na,b\n")
    with pytest.raises(UploadError, match="bias_type"):
        crows_pairs.load_pairs(bad)


def test_generation_is_seeded_and_stoppable(lms, classifier):
    prompts = generation_probe.parse_prompts("woman: The woman worked as\nman: The man worked as")
    settings = generation_probe.SamplingSettings(samples=3, max_new_tokens=6, seed=7)
    first, stopped = generation_probe.generate_continuations(*lms["llama"], prompts, settings)
    again, _ = generation_probe.generate_continuations(*lms["llama"], prompts, settings)
    other, _ = generation_probe.generate_continuations(*lms["llama"], prompts,
                                                       generation_probe.SamplingSettings(3, 6, seed=8))
    assert not stopped and len(first) == 6 and first.equals(again) and not first.equals(other)
    result = generation_probe.analyse(first, classifier, resamples=100)
    assert set(result.sentiment["group"]) == {"woman", "man"} and result.sentiment_label == "positive"
    flag = StopFlag()
    flag.stop()
    partial, stopped = generation_probe.generate_continuations(*lms["llama"], prompts, settings, stop=flag)
    assert stopped and partial.empty
    with pytest.raises(ValueError, match="two groups"):
        generation_probe.analyse(partial)
    with pytest.raises(ValueError, match="two groups"):
        generation_probe.parse_prompts("woman: The woman worked as")


def test_word_differences_and_gendered_counts_by_hand():
    samples = pd.DataFrame({"group": ["w", "w", "m", "m"], "prompt": "p", "sample": [0, 1, 0, 1],
                            "continuation": ["a nurse, she said", "a nurse and mother", "an engineer. He", "a nurse"]})
    words = generation_probe.word_differences(samples).set_index(["word", "group"])
    assert words.loc[("nurse", "w"), "share"] == 1.0 and words.loc[("nurse", "m"), "share"] == 0.5
    assert words.loc[("engineer", "m"), "spread"] == 0.5
    counts = generation_probe.gendered_counts(samples).set_index("group")
    assert counts.loc["w", "female_terms"] == 2 and counts.loc["m", "male_terms"] == 1 and counts.loc["m", "female_terms"] == 0


def test_fairness_matches_fairlearn_and_a_hand_computed_example():
    # group a: TPR 2/2, FPR 1/2, selection 3/4; group b: TPR 1/2, FPR 0/2, selection 1/4
    y_true = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    y_pred = np.array([1, 1, 1, 0, 1, 0, 0, 0])
    groups = np.array(list("aaaabbbb"))
    result = fairness.fairness_metrics(y_true, y_pred, groups, resamples=200)
    got = {k: v.estimate for k, v in result.disparities.items()}
    assert got == pytest.approx({"demographic_parity_difference": 0.5, "demographic_parity_ratio": 1 / 3,
                                 "equalized_odds_difference": 0.5})
    rows = result.by_group.set_index("group")
    assert rows.loc["a", "tpr"] == 1.0 and rows.loc["b", "fpr"] == 0.0 and rows.loc["b", "accuracy"] == 0.75
    rng = np.random.default_rng(0)
    yt, yp, g = rng.integers(0, 2, 300), rng.integers(0, 2, 300), rng.choice(list("xyz"), 300)
    hand = fairness.disparities(yt, yp, g)
    assert hand["demographic_parity_difference"] == pytest.approx(demographic_parity_difference(yt, yp, sensitive_features=g))
    assert hand["demographic_parity_ratio"] == pytest.approx(demographic_parity_ratio(yt, yp, sensitive_features=g))
    assert hand["equalized_odds_difference"] == pytest.approx(equalized_odds_difference(yt, yp, sensitive_features=g))


def test_fairness_bad_uploads_get_clear_messages(tmp_path):
    cases = {"missing.csv": ("text,group\nhi,a\n", "no column 'label'"),
             "one_group.csv": ("text,label,group\nhi,1,a\nyo,0,a\n", "only one group"),
             "three_labels.csv": ("text,label,group\nhi,1,a\nyo,0,b\nhey,2,b\n", "binary labels")}
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(UploadError, match=message):
            fairness.load_fairness_data(tmp_path / name)


def test_fairness_on_tiny_classifier_and_label_mapping(classifier):
    assert fairness.map_predictions(["NEGATIVE", "POSITIVE"], np.array([1, 0]), ["negative", "positive"]) == [
        "positive", "negative"]
    assert fairness.map_predictions(["LABEL_0", "LABEL_1"], np.array([1, 0]), ["0", "1"]) == ["1", "0"]
    with pytest.raises(UploadError, match="match neither"):
        fairness.map_predictions(["neg", "pos"], np.array([0]), ["bad", "good"])
    data = fairness.load_fairness_data()
    result, scored = fairness.run_fairness(data, classifier, resamples=100)
    assert result.positive == "positive" and set(result.by_group["group"]) == set(data["group"])
    assert result.by_group["count"].sum() == len(data) and scored["prediction"].isin(["positive", "negative"]).all()


def test_report_html_is_self_contained_and_json_complete(lms, tmp_path):
    pairs, _ = crows_pairs.load_pairs()
    result = crows_pairs.run_crows(pairs.head(6), *lms["gpt2"], resamples=50)
    section = crows_pairs.to_section(result, {"language model": "tiny-gpt2"}, {"batch size": 16}, seed=5)
    html_path, json_path = write_report([section], tmp_path)
    page = html_path.read_text()
    assert not re.search(r"<script[^>]*\bsrc=", page) and "Plotly.newPlot" in page  # plotly.js is inline
    assert "Caveat" in page and "tiny-gpt2" in page
    data = json.loads(json_path.read_text())
    first = data["sections"][0]
    assert data["created"] and first["models"] == {"language model": "tiny-gpt2"} and first["seed"] == 5
    assert len(first["data_sha256"]) == 64 and first["settings"] == {"batch size": 16}
    assert first["summary"][0]["bias_type"] == "overall" and first["notes"][0]["caveat"]
    assert report_json([section]) != report_json([crows_pairs.to_section(result, {"language model": "x"}, {}, 6)])
    assert report_html([section]).count("Plotly.newPlot") == 2
    with pytest.raises(ValueError, match="at least one probe"):
        write_report([], tmp_path)


@pytest.mark.real_model
def test_crows_sample_with_offline_smollm2(services):
    loaded = services.manager.load("HuggingFaceTB/SmolLM2-135M-Instruct", precision="fp32")
    assert prefix_token_id(loaded.tokenizer) == loaded.tokenizer.bos_token_id
    pairs = crows_pairs.load_pairs()[0].head(8)
    result = crows_pairs.run_crows(pairs, loaded.model, loaded.tokenizer, batch_size=16, resamples=200)
    assert result.by_type.iloc[0].pairs == len(pairs) and 0 <= result.by_type.iloc[0].pct_stereotype <= 100
    single = sentence_logprobs(loaded.model, loaded.tokenizer, pairs["sent_more"].head(3).tolist(), batch_size=1)
    np.testing.assert_allclose(result.pairs["ll_more"].head(3), single, atol=1e-3)
