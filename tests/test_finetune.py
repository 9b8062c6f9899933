"""Fine-tuning core: data validation messages, metrics, and short training runs on tiny random models."""
from __future__ import annotations

import json
import os
import signal
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from safetensors import safe_open

from core.common.errors import BusyError
from core.common.stopping import StopFlag
from core.common.uploads import UploadError
from core.common.work_queue import WorkQueue
from core.finetune.data import (
    ColumnGuess,
    ColumnMapping,
    DataRequest,
    LabeledTexts,
    LmTexts,
    TaggedSentences,
    guess_columns,
    prepare,
    preview,
    read_conll,
    split,
)
from core.finetune.hub import HubError, push_to_hub, zip_model
from core.finetune.jobs import DONE, FAILED, JobRegistry
from core.finetune.metrics import classification_metrics, entity_metrics, entity_spans
from core.finetune.progress import TrainingProgress
from core.finetune.tasks import IGNORE, CausalLmTask, Hyperparameters, TokenClassificationTask, render_pair
from core.finetune.training import FineTuneSpec, apply_lora, count_parameters, run_finetune
from core.models.paths import assets_dir
from core.models.registry import CAUSAL_LM, TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION
from core.models.store import CARD

TINY = dict(epochs=1, batch_size=8, max_length=32, evals_per_epoch=1, warmup=0.0)


def write_csv(path, **cols):
    pd.DataFrame(cols).to_csv(path, index=False)
    return path


@pytest.fixture
def reviews(tmp_path):
    texts = ["good movie", "great fun", "loved it", "bad film", "awful plot", "hated it"] * 4
    return write_csv(tmp_path / "reviews.csv", text=texts, label=["pos"] * 3 + ["neg"] * 3 + ["pos"] * 3 + ["neg"] * 3
                     + ["pos"] * 3 + ["neg"] * 3 + ["pos"] * 3 + ["neg"] * 3)


# ---- validation messages --------------------------------------------------------------------------------------------
def test_missing_column_names_the_columns(tmp_path):
    path = write_csv(tmp_path / "a.csv", sentence=["x", "y"], label=["a", "b"])
    with pytest.raises(UploadError, match="no column 'text'.*'sentence', 'label'"):
        prepare(TEXT_CLASSIFICATION, path, ColumnMapping())


def test_an_id_column_is_never_guessed_and_a_missing_label_is_named_first(tmp_path):
    assert guess_columns(["id", "comment_body"]) == ColumnGuess("comment_body", None, None)
    assert guess_columns(["ID", "comment_id", "body", "toxic"]) == ColumnGuess("body", "toxic", None)
    assert guess_columns(["Unnamed: 0", "review", "sentiment"]) == ColumnGuess("review", "sentiment", None)
    assert guess_columns(["prompt", "response"]) == ColumnGuess("response", None, "prompt")
    path = write_csv(tmp_path / "comments.csv", id=["1", "2", "3"], comment_body=["a", "b", "c"])
    # what the form sends when no label column was found: the default name, which the file lacks
    request = DataRequest(TEXT_CLASSIFICATION, str(path), "comment_body", None)
    with pytest.raises(UploadError, match=r"no column 'label' \(the label\); its columns are 'id', 'comment_body'\. "
                                          "Pick the label column"):
        request.prepare()
    with pytest.raises(UploadError, match="the text and label are both the column 'id'"):
        DataRequest(TEXT_CLASSIFICATION, str(path), "id", "id").prepare()
    with pytest.raises(UploadError, match="'id' has a different value in every row, like an id"):
        DataRequest(TEXT_CLASSIFICATION, str(path), "comment_body", "id").prepare()


def test_examples_to_use_samples_every_class_and_says_so(tmp_path):
    path = write_csv(tmp_path / "many.csv", text=[f"t{i}" for i in range(200)], label=["a", "b", "b", "c"] * 50)
    data = DataRequest(TEXT_CLASSIFICATION, str(path), max_examples=40).prepare()
    assert len(data.train) + len(data.eval) == 40 and set(data.train.labels) == {"a", "b", "c"}
    assert data.train.labels.count("b") == 2 * data.train.labels.count("a")  # stratified: the shares are kept
    assert "a sample of the file's 200" in data.summary()
    full = DataRequest(TEXT_CLASSIFICATION, str(path), max_examples=0).prepare()
    assert len(full.train) + len(full.eval) == 200 and "sample" not in full.summary()
    with pytest.raises(UploadError, match="at least 4"):
        DataRequest(TEXT_CLASSIFICATION, str(path), max_examples=2).prepare()


def test_the_eta_follows_the_steps_after_the_first():
    from core.finetune.progress import ProgressSnapshot

    def eta(step, elapsed, first):
        return ProgressSnapshot("Training", step, 10, elapsed, (), (), (), (), 0, first).eta_seconds

    assert eta(1, 10.0, 10.0) is None  # one step, all warm-up: no honest ETA yet
    assert eta(3, 12.0, 10.0) == pytest.approx(7.0)  # 1 s a step since the first, 7 steps to go


def test_one_class_is_refused(tmp_path):
    path = write_csv(tmp_path / "a.csv", text=["x", "y", "z"], label=["pos"] * 3)
    with pytest.raises(UploadError, match="only 1 class.*at least two"):
        prepare(TEXT_CLASSIFICATION, path, ColumnMapping())


def test_empty_rows_are_listed(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("text,label\nfine,pos\n,neg\nok,pos\n   ,neg\n")
    with pytest.raises(UploadError, match=r"2 row\(s\) have an empty 'text' \(data rows 2, 4\)"):
        prepare(TEXT_CLASSIFICATION, path, ColumnMapping())


def test_undecodable_bytes_and_size_limit(tmp_path):
    bad = tmp_path / "latin.csv"
    bad.write_bytes("text,label\ncaf\xe9,pos\n".encode("latin-1"))
    with pytest.raises(UploadError, match="not valid UTF-8"):
        prepare(TEXT_CLASSIFICATION, bad, ColumnMapping())
    big = write_csv(tmp_path / "big.csv", text=["word " * 50] * 20, label=["a", "b"] * 10)
    with pytest.raises(UploadError, match="the limit is"):
        prepare(TEXT_CLASSIFICATION, big, ColumnMapping(), max_bytes=1024)


def test_stratified_split_keeps_every_class(reviews):
    data = prepare(TEXT_CLASSIFICATION, reviews, ColumnMapping(), eval_percent=10)
    assert set(data.eval.labels) == {"pos", "neg"} and len(data.train) + len(data.eval) == 24
    with pytest.raises(UploadError, match="only one example"):
        split(LabeledTexts(["a", "b", "c"], ["x", "x", "y"]), 30)


def test_eval_file_with_unknown_label(reviews, tmp_path):
    other = write_csv(tmp_path / "ood.csv", text=["meh"], label=["neutral"])
    with pytest.raises(UploadError, match="labels the training data lacks: neutral"):
        prepare(TEXT_CLASSIFICATION, reviews, ColumnMapping(), extra_eval_path=other)


def test_conll_reading_and_messages(tmp_path):
    data = read_conll(assets_dir() / "ner_tiny.txt")
    assert len(data) >= 30 and data.tag_set[0] == "O" and "B-PER" in data.tag_set
    assert preview(assets_dir() / "ner_tiny.txt").columns.tolist() == ["sentence", "token", "tag"]
    bad = tmp_path / "bad.txt"
    bad.write_text("Paris B-LOC\nis\n")
    with pytest.raises(UploadError, match="line 2: expected 'token TAG'"):
        read_conll(bad)
    bad.write_text("Paris LOCATION\n")
    with pytest.raises(UploadError, match="line 1: tag 'LOCATION' is not O, B-TYPE or I-TYPE"):
        read_conll(bad)
    bad.write_text("just O\nwords O\n")
    with pytest.raises(UploadError, match="only 'O' tags"):
        read_conll(bad)


def test_prompt_response_columns(tmp_path):
    data = prepare(CAUSAL_LM, assets_dir() / "instructions.jsonl", ColumnMapping(text="response", prompt="prompt"))
    assert isinstance(data.train, LmTexts) and data.train.prompts is not None
    with pytest.raises(UploadError, match="no column 'question'"):
        prepare(CAUSAL_LM, assets_dir() / "instructions.jsonl", ColumnMapping(text="response", prompt="question"))


# ---- metrics ----------------------------------------------------------------------------------------------------------
def test_classification_metrics_by_hand():
    m = classification_metrics(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["a", "b"])
    assert m.accuracy == 0.75 and m.confusion == [[1, 1], [0, 2]]
    assert m.recall == pytest.approx((0.5 + 1.0) / 2) and m.precision == pytest.approx((1.0 + 2 / 3) / 2)
    assert m.report.set_index("label").loc["b", "support"] == 2


def test_entity_metrics_count_whole_spans():
    assert entity_spans(["B-PER", "I-PER", "O", "I-LOC", "B-LOC"]) == {("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 5)}
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "O", "O", "B-LOC"]]  # PER span cut short: wrong; LOC right
    m = entity_metrics(gold, pred)
    assert (m.precision, m.recall, m.f1) == (0.5, 0.5, 0.5) and m.token_accuracy == 0.75


# ---- encoding -----------------------------------------------------------------------------------------------------------
def test_prompt_tokens_are_not_learned(tiny_lm_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm_dirs["llama"])
    head, whole = render_pair(tok, "What is the capital?", "Paris.")
    assert whole.startswith(head) and "<|im_start|>assistant" in head
    row = CausalLmTask().encode(tok, LmTexts(["Paris."], ["What is the capital?"]), 64)[0]
    learned = [t for t in row["labels"] if t != IGNORE]
    assert row["labels"][0] == IGNORE and tok.decode(learned).startswith("Paris.")


def test_ner_labels_only_first_subword(tiny_ner_dir):
    task = TokenClassificationTask()
    data = TaggedSentences([["Zurich", "is", "lovely"]], [["B-LOC", "O", "O"]])
    _, tok = task.load(str(tiny_ner_dir), data)
    row = task.encode(tok, data, 32)[0]
    kept = [task.labels[i] for i in row["labels"] if i != IGNORE]
    assert kept == ["B-LOC", "O", "O"] and row["labels"][0] == IGNORE  # [CLS]


# ---- training runs ------------------------------------------------------------------------------------------------------
def test_classifier_trains_saves_and_is_offered(reviews, tiny_classifier_dir, services, tmp_path):
    ood = write_csv(tmp_path / "ood.csv", text=["superb", "dreadful"], label=["pos", "neg"])
    data = prepare(TEXT_CLASSIFICATION, reviews, ColumnMapping(), eval_percent=25, extra_eval_path=ood)
    progress = TrainingProgress()
    result = run_finetune(FineTuneSpec(TEXT_CLASSIFICATION, str(tiny_classifier_dir), data,
                                       Hyperparameters(**TINY, learning_rate=1e-3), "tiny-sentiment"),
                          services.store, progress)
    assert result.steps == 3 and progress.snapshot().train_loss and progress.snapshot().eval_loss
    assert result.metrics.labels == ["neg", "pos"] and sum(map(sum, result.metrics.confusion)) == len(data.eval)
    assert sum(map(sum, result.extra_metrics.confusion)) == 2
    assert (result.folder / "model.safetensors").exists() and (result.folder / "tokenizer.json").exists()
    card = json.loads((result.folder / CARD).read_text())
    assert card["data_hash"] == data.data_hash and card["hyperparameters"]["learning_rate"] == 1e-3
    assert "accuracy" in card["metrics"] and "ood_macro_f1" in card["metrics"]
    assert str(result.folder) in [value for _, value in services.model_choices(TEXT_CLASSIFICATION)]
    loaded = services.manager.load(str(result.folder), TEXT_CLASSIFICATION)
    assert loaded.model.config.id2label == {0: "neg", 1: "pos"}
    from core.classify.ood import OodStats

    assert OodStats.load(result.folder).means["mean"].shape[0] == 2  # the Classify tab's OOD flag gets its statistics
    with zipfile.ZipFile(zip_model(result.folder)) as archive:
        assert "model.safetensors" in archive.namelist()


def test_decoder_classifier_with_lora(reviews, tiny_lm_dirs, services):
    data = prepare(TEXT_CLASSIFICATION, reviews, ColumnMapping(), eval_percent=25)
    result = run_finetune(FineTuneSpec(TEXT_CLASSIFICATION, str(tiny_lm_dirs["gpt2"]), data,
                                       Hyperparameters(**TINY, lora=True)), services.store)
    assert 0 < result.trainable_params < result.total_params / 2
    with safe_open(str(result.folder / "model.safetensors"), "pt") as f:  # the adapter was merged away
        assert not any("lora" in k for k in f.keys())


def test_lora_lowers_held_out_perplexity(tiny_lm_dirs, services, tmp_path):
    text = tmp_path / "story.txt"
    text.write_text("\n".join(["The capital of France is Paris. The quick brown fox jumps over the lazy dog."] * 30))
    data = prepare(CAUSAL_LM, text, ColumnMapping(), eval_percent=20)
    hyper = Hyperparameters(**(TINY | dict(epochs=2, evals_per_epoch=1)), learning_rate=1e-2, lora=True)
    result = run_finetune(FineTuneSpec(CAUSAL_LM, str(tiny_lm_dirs["gpt2"]), data, hyper), services.store)
    assert result.metrics.after < result.metrics.before * 0.95
    assert result.trainable_params < result.total_params / 10  # only the adapter (c_attn, fan_in_fan_out)


def test_chat_pairs_on_llama_and_lora_targets_for_phi(tiny_lm_dirs, services):
    data = prepare(CAUSAL_LM, assets_dir() / "instructions.jsonl", ColumnMapping(text="response", prompt="prompt"),
                   eval_percent=20)
    result = run_finetune(FineTuneSpec(CAUSAL_LM, str(tiny_lm_dirs["llama"]), data,
                                       Hyperparameters(**TINY, learning_rate=1e-3)), services.store)
    assert result.trainable_params == result.total_params and result.metrics.before > 1
    from transformers import AutoModelForCausalLM

    for family in ("phi", "phi3"):
        model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_lm_dirs[family]), Hyperparameters(lora=True),
                           CausalLmTask())
        trainable, total = count_parameters(model)
        assert 0 < trainable < total / 5


def test_ner_training_reports_entity_f1(tiny_ner_dir, services):
    data = prepare(TOKEN_CLASSIFICATION, assets_dir() / "ner_tiny.txt", ColumnMapping(), eval_percent=20)
    result = run_finetune(FineTuneSpec(TOKEN_CLASSIFICATION, str(tiny_ner_dir), data,
                                       Hyperparameters(**TINY, learning_rate=1e-3)), services.store)
    assert 0 <= result.metrics.f1 <= 1 and set(result.metrics.report["entity"]) <= {"PER", "ORG", "LOC"}
    assert json.loads((result.folder / CARD).read_text())["task"] == TOKEN_CLASSIFICATION


def test_stop_keeps_and_saves_the_model(reviews, tiny_classifier_dir, services):
    data = prepare(TEXT_CLASSIFICATION, reviews, ColumnMapping(), eval_percent=25)
    stop = StopFlag()
    stop.stop()
    result = run_finetune(FineTuneSpec(TEXT_CLASSIFICATION, str(tiny_classifier_dir), data,
                                       Hyperparameters(**(TINY | dict(epochs=5, batch_size=2)))),
                          services.store, stop=stop)
    assert result.stopped and result.steps == 1 and result.best_step == 1
    assert (result.folder / "model.safetensors").exists() and "stopped by you" in result.card.notes


def test_early_stopping_ends_a_run_that_does_not_improve(reviews, tiny_classifier_dir, services):
    data = prepare(TEXT_CLASSIFICATION, reviews, ColumnMapping(), eval_percent=25)
    hyper = Hyperparameters(**(TINY | dict(epochs=3, batch_size=6, evals_per_epoch=3)), learning_rate=1e-12,
                            patience=1)
    result = run_finetune(FineTuneSpec(TEXT_CLASSIFICATION, str(tiny_classifier_dir), data, hyper), services.store)
    assert result.early_stopped and result.steps == 2 and result.best_step == 1


# ---- jobs and sharing ---------------------------------------------------------------------------------------------------
def wait_for_file(path: str, progress, stop) -> str:
    """A stand-in training run (in the child process): works until `path` exists or it is stopped."""
    while not (Path(path).exists() or stop.stopped):
        progress.set_phase("working")
        time.sleep(0.02)
    return stop.reason if stop.stopped else "finished"


def divide_by_zero(progress, stop):
    return 1 / 0


def test_one_run_per_user_a_visible_queue_and_failures_that_stay_in_their_job(tmp_path):
    jobs = JobRegistry(WorkQueue(slots=1))
    release = str(tmp_path / "release")
    first = jobs.submit("alice", "first", wait_for_file, release)
    with pytest.raises(BusyError, match="already have a run"):
        jobs.submit("alice", "again", wait_for_file, release)
    second = jobs.submit("bob", "second", wait_for_file, release)
    for _ in range(200):
        if "1st in line" in second.progress.snapshot().phase:
            break
        second.wait(0.05)
    assert "1st in line" in second.progress.snapshot().phase and second.state == "queued"
    Path(release).touch()
    assert first.wait(60) and second.wait(60) and first.result == second.result == "finished"
    assert second.state == DONE and jobs.get("bob") is second

    third = jobs.submit("carol", "fails", divide_by_zero)
    assert third.wait(60) and third.state == FAILED and "division by zero" in third.error


def test_a_killed_training_process_fails_its_job_only(tmp_path):
    jobs = JobRegistry(WorkQueue(slots=2))
    doomed = jobs.submit("alice", "doomed", wait_for_file, str(tmp_path / "never"))
    for _ in range(600):
        if doomed.pid:
            break
        time.sleep(0.05)
    os.kill(doomed.pid, signal.SIGKILL)
    assert doomed.wait(30) and doomed.state == FAILED and "SIGKILL" in doomed.error and "still running" in doomed.error
    again = jobs.submit("alice", "next run", wait_for_file, str(tmp_path / "never"))  # the user can start over
    assert jobs.stop("alice") and again.wait(60) and again.result == "stopped by you"


def test_the_time_budget_stops_a_run_and_says_so(tmp_path):
    jobs = JobRegistry(WorkQueue(slots=1, time_budget_s=1.0))
    job = jobs.submit("alice", "long", wait_for_file, str(tmp_path / "never"))
    assert job.wait(60) and job.state == DONE and "time budget" in job.result


def test_hub_push_never_shows_the_token(tiny_classifier_dir):
    with pytest.raises(HubError, match="user-or-org/name"):
        push_to_hub(tiny_classifier_dir, "noslash", "hf_x")
    token = "hf_secret_value_123"
    with pytest.raises(HubError) as err:
        push_to_hub(tiny_classifier_dir, "someone/model", token)  # offline here: the request fails
    assert token not in str(err.value) and "Push to someone/model failed" in str(err.value)



def test_final_predictions_keep_the_examples_order(tiny_classifier_dir, tmp_path):
    """Training groups batches by length; scoring must not, or predictions meet the wrong labels."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer

    from core.finetune.tasks import ClassificationTask, predict_in_order
    from core.finetune.training import training_arguments

    tokenizer = AutoTokenizer.from_pretrained(tiny_classifier_dir)
    texts = [" ".join(["word"] * n) for n in (1, 30, 2, 25, 3, 20, 4, 15)] * 4
    rows = [{**tokenizer(t), "labels": i % 2} for i, t in enumerate(texts)]
    hyper = Hyperparameters(**TINY)
    trainer = Trainer(model=AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir),
                      args=training_arguments(hyper, ClassificationTask(), len(rows), str(tmp_path)),
                      eval_dataset=rows, data_collator=DataCollatorWithPadding(tokenizer))
    expected = [row["labels"] for row in rows]
    assert trainer.args.train_sampling_strategy == "group_by_length"
    assert list(trainer.predict(rows).label_ids) != expected  # what the plain call does with these lengths
    assert list(predict_in_order(trainer, rows).label_ids) == expected
