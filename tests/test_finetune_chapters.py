"""Fine-tune's distillation, bias mitigation and custom heads, on tiny random models."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from core.bias.swaps import counterfactuals
from core.classify.classifier import predict_proba
from core.common.errors import InputError
from core.common.uploads import UploadError
from core.finetune.data import ColumnMapping, LabeledTexts, prepare
from core.finetune.distil import kept_layers
from core.finetune.mitigation import augment, reweighing
from core.finetune.progress import TrainingProgress
from core.finetune.tasks import Hyperparameters, matching_labels
from core.finetune.training import FineTuneSpec, run_finetune
from core.models.heads import ATTENTION, MEAN_MLP, STANDARD, PooledClassifier
from core.models.registry import CAUSAL_LM, TEXT_CLASSIFICATION

TINY = dict(epochs=1, batch_size=8, max_length=32, evals_per_epoch=1, warmup=0.0, learning_rate=1e-3)


@pytest.fixture
def reviews(tmp_path):
    texts = ["he loved the movie", "she had great fun", "loved it", "bad film", "awful plot, he said",
             "she hated it"] * 4
    labels = ["positive"] * 3 + ["negative"] * 3
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"text": texts, "label": labels * 4, "group": ["men", "women"] * 12}).to_csv(path, index=False)
    return prepare(TEXT_CLASSIFICATION, path, ColumnMapping(), eval_percent=25)


def train(services, task, base, data, **hyper):
    progress = TrainingProgress()
    result = run_finetune(FineTuneSpec(task, str(base), data, Hyperparameters(**(TINY | hyper))), services.store,
                          progress)
    return result, progress.snapshot()


# ---- distillation ---------------------------------------------------------------------------------------------------
def test_kept_layers_are_evenly_spaced_and_a_larger_student_is_refused():
    assert kept_layers(6, 3) == [0, 2, 5] and kept_layers(12, 2) == [0, 11]
    with pytest.raises(InputError, match="fewer layers than its teacher's 6"):
        kept_layers(6, 6)
    with pytest.raises(InputError, match="single layer"):
        kept_layers(1, 1)


def test_distilled_classifier_is_smaller_measured_and_loads_in_other_tabs(reviews, tiny_classifier_dir, services):
    result, snap = train(services, TEXT_CLASSIFICATION, tiny_classifier_dir, reviews, distil=True, student_layers=1,
                         distil_alpha=0.7, distil_temperature=3.0)
    teacher, student = result.table
    assert (teacher.name, student.name) == ("teacher", "student")
    assert student.params < teacher.params and student.size_mb < teacher.size_mb
    assert teacher.trained_params == 0 and student.trained_params == student.params
    assert teacher.speed_unit == "texts/s" and student.speed > 0 and teacher.score_name == "accuracy"
    assert {term for _, term, _ in snap.loss_terms} == {"kd_loss", "ce_loss"}  # both curves are drawn
    assert any("1 of the teacher's 2 layers" in note for note in result.notes)
    loaded = services.manager.load(str(result.folder), TEXT_CLASSIFICATION)
    assert loaded.model.config.num_hidden_layers == 1
    assert predict_proba(loaded.model, loaded.tokenizer, ["a fine film"]).probs.shape == (1, 2)


def test_distilling_a_causal_lm_reports_perplexity_before_and_after(tiny_lm_dirs, services, tmp_path):
    text = tmp_path / "story.txt"
    text.write_text("\n".join(["The capital of France is Paris. The quick brown fox jumps over the lazy dog."] * 30))
    data = prepare(CAUSAL_LM, text, ColumnMapping(), eval_percent=20)
    result, snap = train(services, CAUSAL_LM, tiny_lm_dirs["llama"], data, distil=True, learning_rate=1e-2)
    teacher, student = result.table
    assert teacher.speed_unit == "tokens/s" and teacher.score_name == "perplexity"
    assert result.metrics.before == pytest.approx(teacher.score)  # the teacher's perplexity, then the student's
    assert student.params < teacher.params and snap.loss_terms
    loaded = services.manager.load(str(result.folder), CAUSAL_LM)
    out = loaded.model.generate(**loaded.tokenizer("The capital", return_tensors="pt"), max_new_tokens=3,
                                do_sample=False)
    assert out.shape[1] > 2


def test_distillation_refusals_say_what_to_change(reviews, tiny_classifier_dir, tiny_lm_dirs, services):
    with pytest.raises(InputError, match="fewer layers than its teacher's 2"):
        train(services, TEXT_CLASSIFICATION, tiny_classifier_dir, reviews, distil=True, student_layers=3)
    with pytest.raises(InputError, match="turn LoRA off"):
        train(services, TEXT_CLASSIFICATION, tiny_classifier_dir, reviews, distil=True, lora=True)
    # a decoder that was never a classifier has no labels to teach
    with pytest.raises(InputError, match="Distil a classifier trained for these labels"):
        train(services, TEXT_CLASSIFICATION, tiny_lm_dirs["gpt2"], reviews, distil=True)


def test_labels_match_by_name_or_by_position_when_distilling():
    assert matching_labels(["negative", "positive"], ["Positive", "negative"], numeric=False) == {
        "Positive": "positive", "negative": "negative"}
    assert matching_labels(["negative", "positive"], ["0", "1"], numeric=True) == {"0": "negative", "1": "positive"}
    assert matching_labels(["negative", "positive"], ["0", "1"], numeric=False) is None
    assert matching_labels(None, ["a", "b"], numeric=True) is None


# ---- bias mitigation --------------------------------------------------------------------------------------------------
def test_counterfactuals_swap_group_words_both_ways_keeping_case():
    assert counterfactuals("He thanked his sister") == ["She thanked her brother"]
    assert counterfactuals("She thanked her brother") == ["He thanked his sister"]  # possessive "her" -> "his"
    assert counterfactuals("I told her to go") == ["I told him to go"]  # object "her" -> "him"
    assert counterfactuals("An old man") == ["An old woman", "A young man"]  # one axis at a time
    religions = counterfactuals("A Muslim family")
    assert len(religions) == 5 and "An Atheist family" in religions  # every other religion, articles fixed
    assert counterfactuals("a fine film") == []


def test_augmentation_without_group_words_adds_nothing_and_says_so():
    data = LabeledTexts(["a fine film", "a dull film"], ["positive", "negative"])
    result = augment(data)
    assert result.added == 0 and "added nothing" in result.message and result.data == data
    grown = augment(LabeledTexts(["he was great", "a dull film"], ["positive", "negative"]))
    assert grown.added == 1 and grown.data.texts[-1] == "she was great" and grown.data.labels[-1] == "positive"


def test_reweighing_balances_group_and_label_and_needs_a_group_column(reviews, tiny_classifier_dir, services,
                                                                     tmp_path):
    weights = reweighing(LabeledTexts(["a"] * 4, ["pos", "pos", "pos", "neg"], ["m", "m", "f", "f"]))
    assert weights == pytest.approx([0.75, 0.75, 1.5, 0.5])  # P(g) P(y) / P(g, y)
    with pytest.raises(UploadError, match="'group' column"):
        reweighing(LabeledTexts(["a", "b"], ["pos", "neg"]))
    result, _ = train(services, TEXT_CLASSIFICATION, tiny_classifier_dir, reviews, augment=True, reweigh=True)
    assert any("swapped copies" in n for n in result.notes) and any("Reweighing" in n for n in result.notes)
    plain = tmp_path / "no_groups.csv"
    pd.DataFrame({"text": reviews.train.texts, "label": reviews.train.labels}).to_csv(plain, index=False)
    no_groups = prepare(TEXT_CLASSIFICATION, plain, ColumnMapping(), eval_percent=25)
    with pytest.raises(UploadError, match="needs a 'group' column"):
        train(services, TEXT_CLASSIFICATION, tiny_classifier_dir, no_groups, reweigh=True)


def test_mitigation_is_for_classifiers_only(tiny_lm_dirs, services, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("\n".join(["he said hello"] * 20))
    data = prepare(CAUSAL_LM, text, ColumnMapping(), eval_percent=20)
    with pytest.raises(InputError, match="for text classification"):
        train(services, CAUSAL_LM, tiny_lm_dirs["gpt2"], data, augment=True)


# ---- custom heads ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("head", [MEAN_MLP, ATTENTION])
def test_each_head_trains_saves_and_reloads_with_the_same_outputs(head, reviews, tiny_classifier_dir, services):
    result, _ = train(services, TEXT_CLASSIFICATION, tiny_classifier_dir, reviews, head=head, compare=True)
    this, twin = result.table
    assert this.name.startswith("this run: " + head) and twin.name.startswith("plain twin: " + STANDARD)
    assert this.train_seconds > 0 and twin.train_seconds > 0 and this.score_name == "accuracy"
    loaded = services.manager.load(str(result.folder), TEXT_CLASSIFICATION)
    assert isinstance(loaded.model, PooledClassifier) and loaded.model.pooling == head
    probs = predict_proba(loaded.model, loaded.tokenizer, ["loved it", "bad film"]).probs
    again = PooledClassifier.from_folder(result.folder)
    batch = loaded.tokenizer(["loved it", "bad film"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.allclose(again(**batch).logits.softmax(-1), torch.as_tensor(probs, dtype=torch.float32),
                              atol=1e-5)


def test_frozen_encoder_trains_the_head_only(reviews, tiny_classifier_dir, services):
    result, _ = train(services, TEXT_CLASSIFICATION, tiny_classifier_dir, reviews, head=MEAN_MLP, freeze_encoder=True)
    hidden = 32  # tests/tiny_models.py build_bert
    assert result.trainable_params == hidden * hidden + hidden + hidden * 2 + 2  # MLP + output layer


def test_custom_heads_refuse_lora_and_unknown_names(reviews, tiny_classifier_dir, services):
    with pytest.raises(InputError, match="turn LoRA off for a custom head"):
        train(services, TEXT_CLASSIFICATION, tiny_classifier_dir, reviews, head=ATTENTION, lora=True)
    with pytest.raises(InputError, match="Unknown classification head"):
        Hyperparameters.from_form({"head": "max pooling"})


# ---- the Bias tab's before / after ------------------------------------------------------------------------------------
def test_swap_probe_measures_how_far_group_words_move_a_classifier(tiny_classifier_dir, services):
    from core.bias.before_after import swap_probe
    from core.bias.swaps import swap_pairs

    origins, copies = swap_pairs(["he was kind", "a fine film", "the old man"])
    assert origins == [0, 2, 2] and copies == ["she was kind", "the old woman", "the young man"]
    loaded = services.manager.load(str(tiny_classifier_dir), TEXT_CLASSIFICATION)
    probe = swap_probe((loaded.model, loaded.tokenizer), ["he was kind", "a fine film", "the old man"], resamples=50)
    assert probe.pairs == 3 and probe.texts == 2 and 0 <= probe.gap.low <= probe.gap.estimate <= probe.gap.high
    with pytest.raises(InputError, match="mentions a group word"):
        swap_probe((loaded.model, loaded.tokenizer), ["a fine film"])


def test_before_after_compares_a_mitigated_model_with_its_twin(reviews, tiny_classifier_dir, services):
    from core.bias import counterfactual, fairness
    from core.bias.before_after import compare, to_section, unmitigated_twin

    result, _ = train(services, TEXT_CLASSIFICATION, tiny_classifier_dir, reviews, augment=True, compare=True)
    this, twin = result.table
    assert this.name == "this run: first token (standard), augmented" and twin.name.startswith("plain twin")
    twin_folder = unmitigated_twin(services.store, str(result.folder))
    assert twin_folder is not None and twin_folder != str(result.folder)
    before, after = (services.manager.load(p, TEXT_CLASSIFICATION) for p in (twin_folder, str(result.folder)))
    data = fairness.load_fairness_data()
    compared = compare((before.model, before.tokenizer), (after.model, after.tokenizer),
                       counterfactual.load_templates()[:4], {"gender": ["woman", "man"]}, data, resamples=50)
    table = compared.summary()
    assert list(table["measure"]) == ["template gap: gender", "template flips: gender", "swap gap", "swap flips",
                                      "demographic parity difference", "equalized odds difference", "accuracy"]
    assert set(table["better"]) <= {"yes", "no", "same"} and table["before"].str.contains(r"\[").all()
    section = to_section(compared, {"before": twin_folder, "after": str(result.folder)}, {}, data, 0)
    assert section.probe == "before_after" and len(section.figures) == 1


def test_the_packaged_teacher_says_when_it_trained_on_the_validation_texts():
    from core.classify.default_classifier import TrainSettings, read_reviews, split_held_out
    from core.finetune.training import teacher_overlap_note
    from core.models.registry import OFFLINE_CLASSIFIER

    settings = TrainSettings()
    trained, _, held_out = split_held_out(*read_reviews(), settings.held_out,
                                          torch.Generator().manual_seed(settings.seed))
    evaluation = LabeledTexts([trained[0], trained[1], held_out[0], "a sentence of my own"], ["positive"] * 4)
    note, = teacher_overlap_note(OFFLINE_CLASSIFIER, evaluation)
    assert "learned from 2 of these 4 validation texts" in note and "optimistic" in note
    assert teacher_overlap_note(OFFLINE_CLASSIFIER, LabeledTexts(held_out[:3], ["positive"] * 3)) == []
    assert teacher_overlap_note("some/other-classifier", evaluation) == []
