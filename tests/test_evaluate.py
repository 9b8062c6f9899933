"""Evaluate's core on tiny random models: the batched scorer, perplexity through the engine, multiple-choice tasks."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.chat.backends import TorchBackend
from core.common.errors import InputError
from core.common.stopping import StopFlag
from core.common.uploads import UploadError
from core.evaluate.multiple_choice import ChoiceItem, ChoiceTask, encode_pair, item_requests, judge, load_builtin, \
    builtin_tasks, read_task
from core.evaluate.perplexity import perplexity, plan_windows
from core.evaluate.runs import EvaluateSettings, History, ModelSpec, evaluate_choices, evaluate_perplexity, model_specs
from core.evaluate.scoring import BatchLimits, ScoreRequest, TokenScores, plan_batches, score_batch, score_requests
from core.models.paths import assets_dir

TEXT = (assets_dir() / "eval_text.txt").read_text(encoding="utf-8")[:900]
SMALL = EvaluateSettings(max_length=64, stride=32, resamples=200)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def tiny(request, tiny_lm_dirs):
    folder = tiny_lm_dirs[request.param]
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    return model, AutoTokenizer.from_pretrained(folder), str(folder)


def one_at_a_time(model, request: ScoreRequest, k: int) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        logits = model(torch.tensor([request.ids[:-1]])).logits[0, request.start - 1:]
    log_probs = torch.log_softmax(logits, -1)
    return log_probs.gather(1, torch.tensor(request.ids[request.start:])[:, None])[:, 0].numpy(), \
        log_probs.topk(k, -1).values.numpy()


def test_a_padded_batch_scores_each_sequence_as_it_scores_alone(tiny):
    model, _tok, _ = tiny
    rng = np.random.default_rng(0)
    requests = [ScoreRequest(tuple(int(t) for t in rng.integers(5, 300, size=n)), start)
                for n, start in ((12, 1), (30, 25), (7, 3), (30, 29), (19, 10))]
    requests.append(ScoreRequest(requests[3].ids[:-1] + (42,), 29))  # reads what request 3 reads: one row for both
    backend = TorchBackend(model, "fp32", "cpu", 256)
    batched = score_batch(backend, requests, top_k=4)
    for request, scores in zip(requests, batched):
        alone, top = one_at_a_time(model, request, 4)
        assert len(scores.logprobs) == len(request.ids) - request.start
        np.testing.assert_allclose(scores.logprobs, alone, atol=1e-4)
        np.testing.assert_allclose(scores.top_logprobs, top, atol=1e-4)
        assert scores.greedy.tolist() == (np.isclose(alone, top[:, 0], atol=1e-6)).tolist()


def test_batches_respect_the_limits_and_keep_shared_rows_together():
    requests = [ScoreRequest((1,) * n + (c,), n) for n in (5, 40, 3, 40, 20) for c in (7, 8)]
    batches = plan_batches(requests, BatchLimits(rows=2, tokens=60))
    assert sorted(i for b in batches for i in b) == list(range(len(requests)))
    for batch in batches:
        rows = {requests[i].reads[0] for i in batch}
        assert len(rows) <= 2 and (len(rows) == 1 or len(rows) * max(map(len, rows)) <= 60)
        assert all((i ^ 1) in batch for i in batch)  # both choices of a question together


def test_score_requests_stops_between_batches_and_reports_progress(tiny):
    model, _tok, _ = tiny
    backend = TorchBackend(model, "fp32", "cpu", 256)
    requests = [ScoreRequest(tuple(range(5, 5 + n)), 1) for n in range(10, 30)]
    seen, stop = [], StopFlag()

    def run(job):
        if len(seen) == 2:
            stop.stop()
        return job(backend)

    with pytest.raises(Exception, match="Stopped after"):
        score_requests(run, requests, limits=BatchLimits(rows=4), progress=lambda f, m: seen.append((f, m)), stop=stop)
    assert seen[0][0] < seen[1][0] < 1 and "left" in seen[0][1]


def test_windows_score_every_token_after_the_first_once():
    for n, length, stride in ((1000, 64, 32), (100, 64, 64), (64, 64, 16), (5, 64, 32), (130, 50, 7)):
        scored = [t for w in plan_windows(n, length, stride) for t in range(w.first, w.end)]
        assert scored == list(range(1, n))
        assert all(w.end - w.begin <= length for w in plan_windows(n, length, stride))


def test_perplexity_through_the_engine_is_the_quantize_number(services, tiny):
    model, tok, folder = tiny
    reference = perplexity(model, tok, TEXT, max_length=64, stride=32)
    *_, run = evaluate_perplexity(services.chat, [ModelSpec(folder, "fp32")], TEXT, "sample", SMALL)
    row = run.rows[0]
    assert row.status == "ok", row.message
    assert row.perplexity == pytest.approx(reference.perplexity, rel=1e-4)
    assert (row.tokens, row.windows, row.context, row.stride) == (reference.tokens, reference.windows, 64, 32)
    assert row.bytes == len(TEXT.encode()) - len(tok.decode(tok(TEXT)["input_ids"][:1]).encode())
    assert row.bits_per_byte == pytest.approx(math.log(reference.perplexity) * row.tokens / math.log(2) / row.bytes)


def test_a_model_that_cannot_load_gets_its_row_and_the_others_go_on(services, tiny_lm_dirs):
    good = str(tiny_lm_dirs["llama"])
    runs = list(evaluate_perplexity(services.chat, [ModelSpec("/no/such/model"), ModelSpec(good, "fp32")], TEXT,
                                    "sample", SMALL))
    failed, ok = runs[-1].rows
    assert failed.status == "failed" and "/no/such/model" in failed.message and ok.status == "ok"
    with pytest.raises(InputError, match="empty"):
        next(evaluate_perplexity(services.chat, [ModelSpec(good)], "  \n", "pasted", SMALL))
    with pytest.raises(InputError, match="at most 6"):
        model_specs([good, "a", "b", "c"], ["auto", "fp32"])
    with pytest.raises(InputError, match="unknown"):
        model_specs([good], ["fp8"])


# ---- multiple choice ---------------------------------------------------------------------------------------------
def test_pairs_are_encoded_as_lm_eval_encodes_them(tiny):
    _model, tok, _ = tiny
    context, continuation = encode_pair(tok, "The capital of France is ", "Paris")  # the space moves over
    assert context == tok("The capital of France is", add_special_tokens=False)["input_ids"]
    assert context + continuation == tok("The capital of France is Paris", add_special_tokens=False)["input_ids"]
    empty, cont = encode_pair(tok, "", "Hello")
    assert empty == [tok.bos_token_id] and cont == tok("Hello", add_special_tokens=False)["input_ids"]
    item = ChoiceItem(1, "Q:" + "x" * 400, ("a", "b"), 0)
    cut = item_requests(tok, item, context_limit=32)
    assert all(len(r.ids) == 33 for r in cut)  # left-truncated to the context (+ the token that is only predicted)


def write(tmp_path, name: str, rows) -> str:
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        path.write_text(rows, encoding="utf-8")
    return str(path)


def test_task_files_are_read_and_bad_ones_named_by_field_or_row(tmp_path):
    good = [{"question": "2+2=", "choices": ["3", "4"], "answer": 1},
            {"question": "Sky:", "choices": ["blue", "green"], "answer": "blue", "prefix": "Colours.\n"}]
    task = read_task(write(tmp_path, "ok.jsonl", good))
    assert [i.answer for i in task.items] == [1, 0] and task.items[1].prefix == "Colours.\n" and len(task.sha256) == 64
    csv = read_task(write(tmp_path, "ok.csv", 'question,choices,answer\n"2+2=","3 | 4",1\n"Sky:","[""blue"", ""red""]",0\n'))
    assert csv.items[0].choices == ("3", "4") and csv.items[1].choices == ("blue", "red")
    cases = {
        "no_answer.jsonl": ([{"question": "q", "choices": ["a", "b"]}], "no column 'answer'"),
        "counts.jsonl": (good + [{"question": "q", "choices": ["a", "b", "c"], "answer": 0}],
                         "row 3 has 3 choices but row 1 has 2"),
        "outside.jsonl": (good + [{"question": "q", "choices": ["a", "b"], "answer": 2}], "row 3: 'answer' 2 is outside"),
        "text.jsonl": ([{"question": "q", "choices": ["a", "b"], "answer": "c"}], "row 1: 'answer' 'c' is not one"),
        "one.jsonl": ([{"question": "q", "choices": ["a"], "answer": 0}], "row 1: 'choices' needs"),
        "blank.jsonl": ([{"question": " ", "choices": ["a", "b"], "answer": 0}], "row 1: 'question' is missing"),
        "empty_choice.jsonl": ([{"question": "q", "choices": ["a", " "], "answer": 0}], "row 1: choice 2 is empty"),
    }
    for name, (rows, message) in cases.items():
        with pytest.raises(UploadError, match=message):
            read_task(write(tmp_path, name, rows))
    huge = tmp_path / "huge.jsonl"
    huge.write_text(json.dumps(good[0]) * 200_000)
    with pytest.raises(UploadError, match="limit is 5 MiB"):
        read_task(huge)


def scores_of(*totals_per_token: list[float]) -> list[TokenScores]:
    return [TokenScores(np.array(t), np.ones(len(t), bool), np.zeros((len(t), 0), int), np.zeros((len(t), 0)))
            for t in totals_per_token]


def test_acc_takes_the_likeliest_choice_and_acc_norm_divides_by_its_characters():
    task = ChoiceTask("t", (ChoiceItem(1, "q", ("cat", "elephant"), 1), ChoiceItem(2, "q", ("yes", "no"), 0)), "", "")
    # item 1: "cat" -3 > "elephant" -4 (acc wrong) but per character -1.0 < -0.5 (acc_norm right)
    result = judge(task, scores_of([-3.0], [-2.0, -2.0], [-0.5], [-1.5]), resamples=100)
    assert result.acc.estimate == 0.5 and result.acc_norm.estimate == 1.0
    assert result.items["predicted"].tolist() == [0, 0] and result.items["predicted_norm"].tolist() == [1, 0]
    assert result.acc.low <= result.acc.estimate <= result.acc.high


def test_the_team_tasks_run_offline_with_per_item_results_and_export(services, tiny_lm_dirs, tmp_path):
    names = [t.name for t in builtin_tasks()]
    assert len(names) == 3 and all("team" in n for n in names)
    task = load_builtin(names[1])
    assert "team's own" in task.source and task.n_choices == 2
    model = str(tiny_lm_dirs["gpt2"])
    runs = list(evaluate_choices(services.chat, [ModelSpec(model, "fp32"), ModelSpec(model, "bf16")], task, SMALL))
    run = runs[-1]
    assert [r.status for r in run.rows] == ["ok", "ok"] and run.rows[0].items == 30
    assert 0 <= run.rows[0].acc_low <= run.rows[0].acc <= run.rows[0].acc_high <= 1
    items = run.items_frame()
    assert len(items) == 60 and {"correct", "correct_norm", "loglikelihoods", "model"} <= set(items.columns)
    history = History([run])
    csv, js = history.write(tmp_path)
    exported = json.loads(js.read_text())[0]
    assert exported["data_sha256"] == task.sha256 and exported["settings"]["stride"] == 32
    assert {(r["model_id"], r["precision"]) for r in exported["rows"]} == {(model, "fp32"), (model, "bf16")}
    assert "acc_norm" in csv.read_text().splitlines()[0]


def test_stop_ends_a_task_run_with_a_stopped_row(services, tiny_lm_dirs):
    task = load_builtin(builtin_tasks()[0].name)
    stop = StopFlag()
    progress = lambda fraction, _msg: stop.stop() if fraction > 0 else None  # noqa: E731
    runs = list(evaluate_choices(services.chat, [ModelSpec(str(tiny_lm_dirs["llama"]), "fp32")] * 2, task,
                                 EvaluateSettings(limits=BatchLimits(rows=4)), progress, stop))
    assert [r.status for r in runs[-1].rows] == ["stopped"] and "Stopped after" in runs[-1].rows[0].message
