"""/v1/completions as evaluation harnesses drive it (prompt forms, echo, logprobs up to 20, max_tokens 0 and 1) and
vLLM's /tokenize, /detokenize and /tokenizer_info, against the launched app.

lm-evaluation-harness is not installed here (it pulls datasets, pyarrow, nltk...): the requests below are the exact
shapes its `local-completions` model sends (lm_eval/models/openai_completions.py `_create_payload`, api_models.py
`create_message`, utils.py `RemoteTokenizer`), and `lm_eval_parse` is its `parse_logprobs`.
"""
from __future__ import annotations

from operator import itemgetter

import httpx
import numpy as np
import pytest

from core.chat.openai_protocol import ApiError, parse_request
from core.evaluate.multiple_choice import encode_pair
from core.evaluate.scoring import ScoreRequest, score_batch


@pytest.fixture(scope="module")
def lone_app(tmp_path_factory, tiny_lm_dirs):
    """An app serving one tiny model: the tokenizer routes answer for it when no model is named, as vLLM's do."""
    from core.common.settings import Settings
    from core.models.manager import ModelManager
    from core.models.store import ModelStore
    from core.services import Services
    from tests.conftest import launched

    services = Services(settings=Settings(chat_runtime="torch"), manager=ModelManager(offline=True),
                        store=ModelStore(tmp_path_factory.mktemp("lone-store")))
    model = str(tiny_lm_dirs["llama"])
    served = services.chat.serve(model)
    server = launched(services)
    yield next(server), model, served
    next(server, None)


@pytest.fixture
def app_url(lone_app):
    return lone_app[0]


@pytest.fixture
def tiny(lone_app):
    return lone_app[1:]


def post(app_url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(app_url + path.lstrip("/"), json=body, timeout=60)


def lm_eval_payload(model: str, prompt) -> dict:
    """LocalCompletionsAPI._create_payload(generate=False)."""
    return {"model": model, "prompt": prompt, "temperature": 0, "max_tokens": 1, "logprobs": 1, "seed": 1234,
            "echo": True}


def lm_eval_parse(outputs: dict, ctxlens: list[int]) -> list[tuple[float, bool]]:
    """LocalCompletionsAPI.parse_logprobs, as lm-eval 0.4 has it."""
    res = []
    for choice, ctxlen in zip(sorted(outputs["choices"], key=itemgetter("index")), ctxlens):
        logprobs = sum(choice["logprobs"]["token_logprobs"][ctxlen:-1])
        is_greedy = all(tok == max(top.values()) for tok, top in zip(choice["logprobs"]["token_logprobs"][ctxlen:-1],
                                                                     choice["logprobs"]["top_logprobs"][ctxlen:-1]))
        res.append((logprobs, is_greedy))
    return res


def test_every_prompt_form_parses_and_bad_ones_are_named():
    parse = lambda **kw: parse_request({"model": "m"} | kw, chat=False, max_new_tokens=64)  # noqa: E731
    assert parse(prompt="hi").prompts == ("hi",)
    assert parse(prompt=["a", "b"]).prompts == ("a", "b")
    assert parse(prompt=[1, 2, 3]).prompts == ((1, 2, 3),)
    assert parse(prompt=[[1, 2], [3]]).prompts == ((1, 2), (3,))
    scored = parse(prompt="hi", echo=True, logprobs=20, max_tokens=0)
    assert scored.scored and scored.max_tokens == 0 and scored.top_logprobs == 20
    for body, param in ((dict(prompt=[]), "prompt"), (dict(prompt=[[1, -2]]), "prompt"), (dict(prompt=["a", 3]), "prompt"),
                        (dict(prompt=[True]), "prompt"), (dict(prompt="x", logprobs=21), "logprobs"),
                        (dict(prompt="x", echo="yes"), "echo"), (dict(prompt="x", max_tokens=-1), "max_tokens"),
                        (dict(prompt="x", echo=True, stream=True), "stream"), (dict(prompt=["a", "b"], stream=True), "stream")):
        with pytest.raises(ApiError) as err:
            parse(**body)
        assert err.value.status == 400 and err.value.param == param, body


def test_echo_returns_the_prompts_logprobs_in_openais_legacy_shape(app_url, tiny):
    model, served = tiny
    prompt = "The capital of France is Paris. Language models predict"
    body = post(app_url, "/v1/completions", {"model": model, "prompt": prompt, "echo": True, "logprobs": 20,
                                            "max_tokens": 0}).json()
    choice = body["choices"][0]
    logprobs, ids = choice["logprobs"], served.tokenizer(prompt)["input_ids"]
    assert choice["text"] == prompt and choice["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 0
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert "".join(logprobs["tokens"]) == prompt and len(logprobs["tokens"]) == len(ids)
    assert logprobs["text_offset"] == [len("".join(logprobs["tokens"][:i])) for i in range(len(ids))]
    expected = score_batch(served.backend, [ScoreRequest(tuple(ids))], top_k=20)[0]
    np.testing.assert_allclose(logprobs["token_logprobs"][1:], expected.logprobs, atol=1e-5)
    for top, best in zip(logprobs["top_logprobs"][1:], expected.top_logprobs):
        assert 1 <= len(top) <= 20 and max(top.values()) == pytest.approx(float(best[0]), abs=1e-5)


def test_max_tokens_one_at_temperature_zero_is_the_greedy_token_with_its_logprob(app_url, tiny):
    model, served = tiny
    prompt = [5, 17, 42, 99, 7]
    whole = post(app_url, "/v1/completions", lm_eval_payload(model, [prompt])).json()["choices"][0]
    plain = post(app_url, "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0,
                                             "logprobs": 1}).json()["choices"][0]
    assert len(whole["logprobs"]["tokens"]) == len(prompt) + 1  # lm-eval cuts this last one off with [ctxlen:-1]
    assert whole["text"] == served.tokenizer.decode(prompt) + plain["text"]
    assert whole["logprobs"]["token_logprobs"][-1] == pytest.approx(plain["logprobs"]["token_logprobs"][0], abs=1e-4)
    sampled = post(app_url, "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": 3, "temperature": 1,
                                               "seed": 3, "echo": True, "logprobs": 7}).json()
    tokens = len(sampled["choices"][0]["logprobs"]["tokens"])
    assert tokens == len(prompt) + sampled["usage"]["completion_tokens"]
    assert all(len(t) <= 7 for t in sampled["choices"][0]["logprobs"]["top_logprobs"][1:])


@pytest.mark.parametrize("tokenized", [True, False])
def test_lm_eval_local_completions_scores_a_served_model_like_the_evaluate_tab(app_url, tiny, tokenized):
    """loglikelihood requests as lm-eval builds them, tokenized_requests true (token lists) and false (texts
    decoded through the remote tokenizer's /detokenize), batched two at a time."""
    model, served = tiny
    tok = served.tokenizer
    pairs = [("Question: What is the capital of France?\nAnswer:", " Paris"),
             ("Question: What is the capital of France?\nAnswer:", " Lyon"),
             ("I loved this movie, it was", " wonderful and moving"), ("The woman worked as a", " nurse")]
    info = httpx.get(app_url + "tokenizer_info", timeout=30).json()  # check_remote_tokenizer_support
    assert info["eos_token"] == tok.eos_token and "chat_template" in info
    assert isinstance(post(app_url, "/tokenize", {"prompt": "test", "add_special_tokens": False}).json()["tokens"], list)
    encoded = [encode_pair(tok, context, continuation) for context, continuation in pairs]
    ours = score_batch(served.backend, [ScoreRequest(tuple(c + k), len(c)) for c, k in encoded])
    theirs = []
    for batch in (encoded[:2], encoded[2:]):
        inputs = [c + k for c, k in batch]
        if not tokenized:
            inputs = [post(app_url, "/detokenize", {"tokens": ids}).json()["prompt"] for ids in inputs]
        outputs = post(app_url, "/v1/completions", lm_eval_payload(model, inputs)).json()
        theirs += lm_eval_parse(outputs, [len(c) for c, _ in batch])
    for (ll, greedy), scores in zip(theirs, ours):
        assert ll == pytest.approx(scores.total, abs=1e-4) and greedy == scores.all_greedy


def test_tokenize_and_detokenize_have_vllms_shape_and_errors_are_named(app_url, tiny):
    model, served = tiny
    tokens = post(app_url, "/tokenize", {"model": model, "prompt": "Hello there"}).json()
    assert tokens["tokens"] == served.tokenizer("Hello there")["input_ids"] and tokens["count"] == len(tokens["tokens"])
    assert tokens["max_model_len"] == served.context and tokens["token_strs"] is None
    chat = post(app_url, "/tokenize", {"model": model, "messages": [{"role": "user", "content": "Hi"}],
                                       "return_token_strs": True}).json()
    assert chat["tokens"] == served.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}],
                                                                  add_generation_prompt=True, tokenize=True)["input_ids"]
    assert len(chat["token_strs"]) == chat["count"]
    assert post(app_url, "/detokenize", {"model": model, "tokens": tokens["tokens"]}).json()["prompt"] == "Hello there"
    bad = post(app_url, "/detokenize", {"model": model, "tokens": [10**9]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    assert post(app_url, "/tokenize", {"model": "no/such-model", "prompt": "x"}).status_code == 404
    out_of_vocabulary = post(app_url, "/v1/completions", {"model": model, "prompt": [[1, 10**9]], "echo": True,
                                                          "max_tokens": 0})
    assert out_of_vocabulary.status_code == 400 and "vocabulary" in out_of_vocabulary.json()["error"]["message"]
    long = post(app_url, "/v1/completions", {"model": model, "prompt": [[5] * (served.context + 1)], "echo": True,
                                             "max_tokens": 0, "logprobs": 1})
    assert long.status_code == 400 and long.json()["error"]["code"] == "context_length_exceeded"
