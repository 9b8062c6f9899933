"""Core classification: probabilities, confidence flag, zero-shot (NLI and embedding), batch files, offline default."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from core.classify.batch import MAX_ROWS, classify_batch, read_batch, texts_from
from core.classify.classifier import SequenceClassifier, TextInputError, classify_text, probability_figure
from core.classify.ood import confidence, normalised_entropy
from core.classify.zero_shot import (
    EmbeddingZeroShot,
    NliZeroShot,
    ZeroShotError,
    entailment_id,
    hypotheses,
    parse_labels,
    zero_shot_classifier,
)
from core.common.errors import InputError
from core.common.stopping import StopFlag
from core.common.uploads import UploadError
from core.models.registry import OFFLINE_CLASSIFIER, TEXT_CLASSIFICATION
from tests.tiny_models import build_bert


@pytest.fixture(scope="module")
def tiny_classifier(tiny_classifier_dir):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir).eval()
    return SequenceClassifier(model, AutoTokenizer.from_pretrained(tiny_classifier_dir))


@pytest.fixture(scope="module")
def tiny_nli_dir(tmp_path_factory):
    return build_bert(tmp_path_factory.mktemp("tiny_nli"), ["contradiction", "neutral", "entailment"])


# ---- single text ---------------------------------------------------------------------------------------------------
def test_classify_text_gives_a_distribution_and_a_chart(tiny_classifier):
    result = classify_text(tiny_classifier, "I loved it", threshold=0.7)
    assert result.probs.labels == ["negative", "positive"]
    assert result.probs.probs.shape == (1, 2) and result.probs.probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert result.label == result.ranked()[0][0]
    assert result.notice is None
    bars = probability_figure(result).data[0]
    assert sorted(bars.y) == ["negative", "positive"]
    assert sum(bars.x) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("text", ["", "   \n ", None])
def test_empty_text_is_refused(tiny_classifier, text):
    with pytest.raises(TextInputError, match="empty"):
        classify_text(tiny_classifier, text)


def test_very_long_text_is_truncated_with_a_notice(tiny_classifier):
    text = ("word " * 20_000)[:99_999] + "!"  # 100,000 characters, nothing to strip
    result = classify_text(tiny_classifier, text)
    assert result.notice and "reads at most 128" in result.notice and "of 100,000 characters" in result.notice
    assert result.probs.probs.shape == (1, 2)


# ---- confidence flag -----------------------------------------------------------------------------------------------
def test_confidence_flags_flat_distributions_only():
    flat, peaked = confidence(np.array([0.5, 0.5]), 0.7), confidence(np.array([0.05, 0.95]), 0.7)
    assert flat.low and flat.entropy == pytest.approx(1.0)
    assert not peaked.low and peaked.entropy < 0.4
    assert "low confidence" in flat.describe() and "0.70" in flat.describe()
    assert normalised_entropy(np.array([1.0, 0.0, 0.0])) == 0.0
    with pytest.raises(ValueError):
        confidence(np.array([0.5, 0.5]), 1.5)


# ---- zero-shot -----------------------------------------------------------------------------------------------------
def test_parse_labels_dedupes_and_needs_two():
    assert parse_labels("sports, Politics,\nsports , science") == ["sports", "Politics", "science"]
    with pytest.raises(ZeroShotError, match="at least two"):
        parse_labels("sports")
    with pytest.raises(ZeroShotError):
        parse_labels(", ".join(f"l{i}" for i in range(30)))
    with pytest.raises(ZeroShotError, match="exactly one"):
        hypotheses(["a", "b"], "no placeholder")


def test_nli_zero_shot_softmaxes_entailment_across_hypotheses(tiny_nli_dir):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_nli_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_nli_dir)
    labels = ["sports", "politics", "science"]
    classifier = NliZeroShot(model, tok, labels, "This text is about {}.")
    probs = classifier.predict(["The match ended in a draw.", "A new law passed."])
    assert probs.labels == labels and probs.probs.shape == (2, 3)
    pairs = tok(["The match ended in a draw."] * 3, [f"This text is about {l}." for l in labels], padding=True,
                return_tensors="pt")
    with torch.no_grad():
        expected = torch.softmax(model(**pairs).logits[:, 2], dim=0).numpy()  # index 2 is 'entailment'
    np.testing.assert_allclose(probs.probs[0], expected, atol=1e-5)


def test_entailment_label_detection(tiny_nli_dir, tiny_classifier_dir):
    from transformers import AutoConfig

    assert entailment_id(AutoConfig.from_pretrained(tiny_nli_dir)) == 2
    assert entailment_id(AutoConfig.from_pretrained(tiny_classifier_dir)) is None


def test_embedding_zero_shot_prefers_the_closest_hypothesis(tiny_classifier_dir):
    encoder = AutoModel.from_pretrained(tiny_classifier_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_classifier_dir)
    classifier = EmbeddingZeroShot(encoder, tok, ["cats", "rockets"], "{}")
    probs = classifier.predict(["cats", "rockets"])
    assert probs.probs.sum(axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)
    # a text identical to a hypothesis has cosine 1 with it, the maximum possible
    assert probs.probs[0].argmax() == 0 and probs.probs[1].argmax() == 1


def test_zero_shot_picks_the_method_from_the_model(services, tiny_nli_dir, tiny_classifier_dir):
    nli = zero_shot_classifier(services.manager, str(tiny_nli_dir), ["a", "b"])
    embedding = zero_shot_classifier(services.manager, str(tiny_classifier_dir), ["a", "b"])
    assert isinstance(nli, NliZeroShot) and isinstance(embedding, EmbeddingZeroShot)


# ---- batch ---------------------------------------------------------------------------------------------------------
def test_batch_csv_with_chosen_column(tmp_path, tiny_classifier):
    path = tmp_path / "reviews.csv"
    path.write_text("id,review\n1,great film\n2,\n3,awful food\n")
    batch = read_batch(path)
    assert batch.columns == ["id", "review"] and batch.suggested_column == "review"
    texts, skipped = texts_from(batch.frame, "review")
    assert texts == ["great film", "awful food"] and skipped == 1
    seen = []
    result = classify_batch(tiny_classifier, texts, 0.7, lambda f, m: seen.append(f), skipped_empty=skipped)
    assert list(result.table["text"]) == texts and seen[-1] == 1.0
    assert {"label", "confidence", "low_confidence", "p(negative)", "p(positive)"} <= set(result.table.columns)
    assert "Labelled 2 texts" in result.summary() and "1 empty rows" in result.summary()


def test_batch_txt_is_one_text_a_line(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("first text\n\nsecond text\n")
    batch = read_batch(path)
    assert batch.columns == ["text"] and texts_from(batch.frame, "text")[0] == ["first text", "second text"]


def test_batch_bad_inputs_get_clear_messages(tmp_path):
    csv = tmp_path / "a.csv"
    csv.write_text("title,body\nx,y\n")
    with pytest.raises(UploadError, match="no column 'review'.*'title', 'body'"):
        texts_from(read_batch(csv).frame, "review")
    binary = tmp_path / "photo.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    with pytest.raises(UploadError, match="binary"):
        read_batch(binary)
    big = tmp_path / "big.txt"
    big.write_text("\n".join(f"text {i}" for i in range(MAX_ROWS + 1)))
    with pytest.raises(UploadError, match="limit"):
        read_batch(big)
    with pytest.raises(UploadError, match="csv or a .txt"):
        read_batch(tmp_path / "data.parquet")


def test_batch_stops_when_asked(tiny_classifier):
    flag = StopFlag()
    flag.stop()
    result = classify_batch(tiny_classifier, ["a", "b", "c"], stop=flag)
    assert result.stopped and result.table.empty and "Stopped early" in result.summary()


# ---- the real offline default -------------------------------------------------------------------------------------
@pytest.mark.real_model
def test_offline_sentiment_default_on_hand_checked_sentences(services):
    """Built once from assets/sentiment_reviews.csv and cached under LLMPG_HOME; a standard classifier folder."""
    loaded = services.manager.load(OFFLINE_CLASSIFIER, task=TEXT_CLASSIFICATION)
    assert loaded.model.config.id2label == {0: "negative", 1: "positive"}
    classifier = SequenceClassifier(loaded.model, loaded.tokenizer)
    cases = {"I loved this film, the acting was wonderful and the story moved me.": "positive",
             "A warm, funny and charming evening at the theater.": "positive",
             "The food was cold, the service was slow and the waiter was rude.": "negative",
             "A dull, lifeless script and two hours of boredom.": "negative"}
    predictions = classifier.predict(list(cases))
    assert [predictions.labels[i] for i in predictions.probs.argmax(1)] == list(cases.values())


# ---- out-of-distribution flags --------------------------------------------------------------------------------------
def test_ood_statistics_calibrate_thresholds_and_pick_a_method(tiny_classifier_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from core.classify.ood import MAHALANOBIS, METHODS, MSP, TPR, OodStats, features_and_logits, fit_stats, flag, scores

    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_classifier_dir)
    train = ["I loved it", "wonderful acting", "great fun", "awful plot", "I hated it", "a dull mess"] * 3
    held = ["lovely and warm", "boring and slow", "a joy to watch", "terrible ending"] * 5
    prose = ["The committee will meet on Tuesday to discuss the budget.", "Rainfall was above average in March.",
             "The train to the coast leaves at nine.", "Photosynthesis turns light into chemical energy."] * 5
    stats = fit_stats(model, tok, train, [1, 1, 1, 0, 0, 0] * 3, held, prose)
    assert set(stats.thresholds) == set(METHODS) == set(stats.auroc) and stats.default in METHODS
    assert all(0 <= a <= 1 for a in stats.auroc.values())
    held_scores = scores(*features_and_logits(model, tok, held), stats)
    for method in METHODS:  # at most 5 % of held-out in-distribution texts fall above each threshold
        assert (held_scores[method] > stats.thresholds[method]).mean() <= 1 - TPR + 1e-9
    stats.save(tmp_path)
    again = OodStats.load(tmp_path)
    assert again.default == stats.default and np.allclose(again.means["head"], stats.means["head"], atol=1e-5)
    flags = flag(*features_and_logits(model, tok, ["some text"]), again, MAHALANOBIS)
    assert flags[0].method == MAHALANOBIS and flags[0].calibrated and "calibrated so 95%" in flags[0].describe()
    assert flag(*features_and_logits(model, tok, ["x"]), None)[0].method == MSP  # no statistics: max softmax
    with pytest.raises(InputError, match="needs statistics"):
        flag(*features_and_logits(model, tok, ["x"]), None, MAHALANOBIS)
    assert OodStats.load(tmp_path / "nothing-here") is None


@pytest.mark.real_model
def test_the_offline_classifier_ships_its_ood_statistics(services):
    from core.classify.ood import METHODS, OodStats

    loaded = services.manager.load(OFFLINE_CLASSIFIER, task=TEXT_CLASSIFICATION)
    stats = OodStats.load(loaded.path)
    assert stats is not None and stats.default in METHODS
    result = classify_text(SequenceClassifier(loaded.model, loaded.tokenizer, stats), "A charming, funny film.")
    assert result.confidence.method == stats.default and result.label == "positive"
