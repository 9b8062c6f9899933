"""The OpenAI-compatible API, used through the official `openai` package against the launched app."""
from __future__ import annotations

import math
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from core.chat.openai_protocol import ApiError, conversation, parse_request
from core.models.registry import DEFAULT_CHAT_MODEL


def api(app_url: str, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=app_url + "v1", api_key=kwargs.pop("api_key", "unused"), max_retries=0, **kwargs)


@pytest.fixture
def tiny_llama(services, tiny_lm_dirs):
    """A tiny model offered by the API: models served by the app are listed, so serve it first."""
    model = str(tiny_lm_dirs["llama"])
    services.chat.serve(model)
    return model


# ---- the protocol, without a server ---------------------------------------------------------------------------------
def test_messages_become_a_conversation_and_bad_parameters_are_named():
    system, turns, message = conversation([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                           {"role": "assistant", "content": "Hello!"},
                                           {"role": "user", "content": [{"type": "text", "text": "And you?"}]}])
    assert system == "Be brief." and [(t.user, t.reply) for t in turns] == [("Hi", "Hello!")] and message == "And you?"
    good = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
    for change, param in ((dict(temperature=3), "temperature"), (dict(top_p="high"), "top_p"), (dict(n=2), "n"),
                          (dict(max_tokens=0), "max_tokens"), (dict(top_logprobs=6, logprobs=True), "top_logprobs"),
                          (dict(stop=["a"] * 5), "stop"), (dict(seed=2**70 * 1.5), "seed"),
                          (dict(messages=[{"role": "robot", "content": "x"}]), "messages"),
                          (dict(messages=[{"role": "assistant", "content": "x"}]), "messages"),
                          (dict(model=""), "model"), (dict(max_completion_tokens=5000), "max_completion_tokens")):
        with pytest.raises(ApiError) as err:
            parse_request(good | change, chat=True, max_new_tokens=1024)
        assert err.value.status == 400 and err.value.param == param, change
    assert parse_request(good | {"max_tokens": 7, "seed": 3}, True, 1024).settings.max_new_tokens == 7


# ---- through the official client ------------------------------------------------------------------------------------
@pytest.mark.real_model
def test_the_default_model_answers_whole_and_streamed_alike(app_url, services):
    services.chat.serve(DEFAULT_CHAT_MODEL)  # the first load converts and exports once; the API would answer 503
    client = api(app_url)
    assert DEFAULT_CHAT_MODEL in {m.id for m in client.models.list()}
    question = [{"role": "system", "content": "You are a helpful assistant. Answer clearly and briefly."},
                {"role": "user", "content": "What is the capital of France?"}]
    whole = client.chat.completions.create(model=DEFAULT_CHAT_MODEL, messages=question, temperature=0, max_tokens=24)
    answer = whole.choices[0].message.content
    assert "Paris" in answer and whole.usage.completion_tokens > 0 and whole.object == "chat.completion"
    stream = client.chat.completions.create(model=DEFAULT_CHAT_MODEL, messages=question, temperature=0, max_tokens=24,
                                            stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == answer and len([p for p in pieces if p]) > 1


def test_logprobs_seed_and_stop(app_url, tiny_llama):
    client = api(app_url)
    messages = [{"role": "user", "content": "Tell me a story"}]
    reply = client.chat.completions.create(model=tiny_llama, messages=messages, max_tokens=6, logprobs=True,
                                           top_logprobs=5, temperature=0)
    for token in reply.choices[0].logprobs.content:
        assert len(token.top_logprobs) == 5
        assert sum(math.exp(t.logprob) for t in token.top_logprobs) <= 1 + 1e-6
        assert token.logprob <= 0
    sampled = [client.chat.completions.create(model=tiny_llama, messages=messages, max_tokens=12, temperature=0.8,
                                              seed=7).choices[0].message.content for _ in range(2)]
    assert sampled[0] == sampled[1]
    full = client.chat.completions.create(model=tiny_llama, messages=messages, max_tokens=12, temperature=0)
    text = full.choices[0].message.content
    stop = text[3:6]
    cut = client.chat.completions.create(model=tiny_llama, messages=messages, max_tokens=12, temperature=0, stop=[stop])
    assert stop not in cut.choices[0].message.content and cut.choices[0].finish_reason == "stop"
    legacy = client.completions.create(model=tiny_llama, prompt="The capital of France is", max_tokens=5, logprobs=3,
                                       temperature=0)
    assert legacy.object == "text_completion" and len(legacy.choices[0].logprobs.tokens) == legacy.usage.completion_tokens
    assert all(1 <= len(top) <= 3 for top in legacy.choices[0].logprobs.top_logprobs)  # keyed by text: pieces may merge


def test_each_error_has_its_status_and_openai_shape(app_url, services, tiny_llama, tiny_lm_dirs, monkeypatch,
                                                     tmp_path):
    client = api(app_url)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=tiny_llama, messages=[{"role": "user", "content": "x"}], temperature=9)
    assert err.value.body["param"] == "temperature" and "between 0 and 2" in err.value.body["message"]
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no/such-model", messages=[{"role": "user", "content": "x"}])
    assert err.value.body["code"] == "model_not_found"
    served = services.chat.ready(tiny_llama)
    monkeypatch.setattr(served.engine, "max_waiting", 0)  # the line is full
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=tiny_llama, messages=[{"role": "user", "content": "x"}], max_tokens=2)
    monkeypatch.undo()
    slow = str(shutil.copytree(tiny_lm_dirs["phi"], tmp_path / "phi"))  # a folder no earlier test has served
    monkeypatch.setattr(type(services), "chat_models", lambda self: {slow: slow})
    original = services.chat._build
    monkeypatch.setattr(services.chat, "_build", lambda *a, **k: (time.sleep(1.5), original(*a, **k))[1])
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model=slow, messages=[{"role": "user", "content": "x"}], max_tokens=2)
    assert err.value.status_code == 503 and err.value.body["code"] == "model_loading"
    deadline = time.monotonic() + 30
    while services.chat.ready(slow) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.chat.completions.create(model=slow, messages=[{"role": "user", "content": "x"}], max_tokens=2)
    raw = httpx.post(app_url + "v1/chat/completions", content=b"{not json", timeout=10)
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"


def test_an_api_key_is_required_when_set(app_url, services, tiny_llama, monkeypatch):
    from dataclasses import replace

    monkeypatch.setattr(services, "settings", replace(services.settings, api_key="s3cret"))
    with pytest.raises(openai.AuthenticationError):
        api(app_url, api_key="wrong").models.list()
    assert tiny_llama in {m.id for m in api(app_url, api_key="s3cret").models.list()}


def test_eight_api_clients_and_a_browser_user_at_once(app_url, services, tiny_llama, monkeypatch):
    from gradio_client import Client

    browser_user = Client(app_url, verbose=False)
    browser_user.predict(model_id=tiny_llama, allow_remote_code=False, api_name="/chat_load_model")
    monkeypatch.setattr(services.chat.ready(tiny_llama).engine, "eos_ids", set())  # a random model: no early end
    chat = browser_user.submit(message="Hello from the page", temperature=0.7, max_new_tokens=30, seed=1,
                               api_name="/chat_send")

    def ask(i: int) -> str:
        reply = api(app_url).chat.completions.create(model=tiny_llama, max_tokens=16, temperature=1.0, seed=100 + i,
                                                     messages=[{"role": "user", "content": f"Question {i}"}])
        assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens > 0
        return reply.choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert len(set(answers)) == 8 and all(answers)
    assert "tokens" in chat.result()[2]


def test_a_client_that_goes_away_cancels_its_request(app_url, services, tiny_llama, monkeypatch):
    served = services.chat.ready(tiny_llama)
    monkeypatch.setattr(served.engine, "eos_ids", set())
    seen = threading.Event()
    with httpx.stream("POST", app_url + "v1/chat/completions", timeout=30,
                      json={"model": tiny_llama, "stream": True, "max_tokens": 900, "temperature": 1.0,
                            "messages": [{"role": "user", "content": "Go on forever"}]}) as response:
        for line in response.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                seen.set()
                break
    assert seen.is_set()
    deadline = time.monotonic() + 10
    while served.engine.load()[0] and time.monotonic() < deadline:  # the engine lets it go
        time.sleep(0.05)
    assert served.engine.load() == (0, 0)


# ---- the Chat tab on another server ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def second_app(tmp_path_factory, tiny_lm_dirs):
    """Another instance of this app on loopback: a real OpenAI-compatible server for the remote engine."""
    from core.common.settings import Settings
    from core.models.manager import ModelManager
    from core.models.store import ModelStore
    from core.services import Services
    from tests.conftest import launched

    other = Services(settings=Settings(chat_runtime="torch"), manager=ModelManager(offline=True),
                     store=ModelStore(tmp_path_factory.mktemp("other-store")))
    other.chat.serve(str(tiny_lm_dirs["llama"]))
    server = launched(other)
    yield next(server), other
    next(server, None)


def test_chat_through_a_remote_server_with_token_view_and_stop(client, second_app, tiny_lm_dirs, monkeypatch):
    url, other = second_app
    model = str(tiny_lm_dirs["llama"])
    connect = lambda base, name: client.predict(base, name, "", api_name="/chat_connect_remote")  # noqa: E731
    assert "http:// or https://" in connect("ftp://example.org", model)
    assert "no answer" in connect("http://127.0.0.1:9/v1", model) and "Still using" in connect("http://127.0.0.1:9", model)
    assert "HTTP 404" in connect(url + "gradio_api", model)
    refused = connect(url + "v1", "nope")
    assert "does not list 'nope'" in refused and "1-token chat completion with 'nope' failed" in refused
    assert "🌐" in connect(url + "v1", model)
    chatbot, _box, status, tokens, prompt, _info, _version = client.predict(message="Hello there", temperature=0,
                                                                  max_new_tokens=8, api_name="/chat_send")
    assert "8 tokens" in status and "token-view" in tokens and "tv-alts" in tokens and '"role": "user"' in prompt
    monkeypatch.setattr(other.chat.ready(model).engine, "eos_ids", set())
    job = client.submit(message="Go on", temperature=1.0, max_new_tokens=900, seed=2, api_name="/chat_send")
    while not job.outputs():
        time.sleep(0.05)
    client.predict(api_name="/chat_stop")
    assert "stopped by user" in job.result()[2]
    deadline = time.monotonic() + 10
    while other.chat.ready(model).engine.load()[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert other.chat.ready(model).engine.load() == (0, 0)  # the closed stream freed the remote request
    client.predict(model_id=model, allow_remote_code=False, api_name="/chat_load_model")  # back to a local model


def test_the_api_answers_from_the_moment_the_port_accepts_connections():
    """A client that arrives as soon as the server listens finds /v1 (the routes are in place before it starts)."""
    from bench.load_tools import launched_app

    with launched_app("--tabs", "chat", poll_s=0.005) as (url, _memory):
        listed = httpx.get(url + "v1/models", timeout=10)
    assert listed.status_code == 200 and DEFAULT_CHAT_MODEL in {m["id"] for m in listed.json()["data"]}
