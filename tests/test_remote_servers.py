"""Chat on an OpenAI-compatible server that is not this app: `transformers serve` (transformers 5.23's own server)
on the packaged SmolLM2 folder, started once per session on a free port.

That server is a real third party: its GET /v1/models answers HTTP 500 without a hub cache folder and, with one,
lists only hub-cache models, yet it serves its pinned model to chat requests; it ignores `logprobs`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from core.chat.remote import RemoteServer, check_server
from core.chat.sampling import SamplingSettings
from core.chat.types import FinishReason
from core.chat.session import ChatSession
from core.models.offline import offline_folder
from core.models.registry import DEFAULT_CHAT_MODEL
from tests.conftest import _free_port

pytestmark = pytest.mark.real_model
START_TIMEOUT_S = 120


@pytest.fixture(scope="session")
def transformers_server(tmp_path_factory):
    """(base URL, model name, HF_HOME of the server) for `transformers serve <SmolLM2 folder>`."""
    folder = str(offline_folder(DEFAULT_CHAT_MODEL))
    home = tmp_path_factory.mktemp("hf-home")  # no hub/ inside yet: its GET /v1/models answers HTTP 500
    port = _free_port()
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", folder, "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "error"]
    env = os.environ | {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        server.kill()
        pytest.fail(f"transformers serve did not start within {START_TIMEOUT_S} s (exit code {server.poll()})")
    yield url + "/v1", folder, home
    server.terminate()
    server.wait(10)


def test_a_listing_that_fails_or_omits_the_model_is_decided_by_a_one_token_reply(transformers_server):
    url, folder, home = transformers_server
    server = RemoteServer.checked(url, folder)
    found = check_server(server).found
    assert "GET /models answered" in found and "1-token chat completion" in found and "was answered" in found
    (home / "hub").mkdir(exist_ok=True)  # now it lists the (empty) hub cache
    check = check_server(server)
    assert check.listed == () and f"does not list '{folder}'" in check.found and "serves it" in check.found
    with pytest.raises(Exception, match="1-token chat completion with .other. failed: HTTP 400 \\(Server is pinned"):
        check_server(RemoteServer.checked(url, "other"))


def test_streaming_stop_retry_and_the_missing_logprobs_notice(transformers_server, services):
    url, folder, _home = transformers_server
    session = ChatSession(DEFAULT_CHAT_MODEL)
    session.connect(RemoteServer.checked(url, folder))
    updates = list(session.reply(services.chat, "Name three colours.", SamplingSettings(temperature=0, max_new_tokens=12)))
    assert len(updates) > 2 and not updates[0].done and updates[-1].done  # streamed piece by piece
    first = session.exchanges[-1].reply.text
    assert first and "no log probabilities" in " ".join(updates[-1].notices) and updates[-1].tokens == []
    retried = list(session.retry(services.chat, SamplingSettings(temperature=1.0, seed=5, max_new_tokens=12)))
    exchange = session.exchanges[-1]
    assert len(session.exchanges) == 1 and len(exchange.replies) == 2 and exchange.shown == 1  # the first one kept
    assert exchange.replies[0].text == first and retried[-1].done
    assert session.show(-1).reply.text == first
    stream = session.reply(services.chat, "Tell me a long story.", SamplingSettings(temperature=1.0, max_new_tokens=400))
    next(stream)
    session.stop()
    last = list(stream)[-1]
    assert last.done and last.stats[-1].finish is FinishReason.STOPPED and last.stats[-1].tokens < 400


def test_the_chat_tab_says_what_it_found_and_shows_the_notice(client, transformers_server, tiny_lm_dirs):
    url, folder, _home = transformers_server
    summary = client.predict(url, folder, "", api_name="/chat_connect_remote")
    assert "🌐" in summary and "1-token chat completion" in summary
    _chatbot, _box, status, tokens, _prompt, _info, _version = client.predict(
        message="Hello", temperature=0, max_new_tokens=6, api_name="/chat_send")
    assert "no log probabilities" in status
    client.predict(api_name="/chat_clear")  # the shared client session goes back as it was: empty, a local model
    client.predict(model_id=str(tiny_lm_dirs["llama"]), allow_remote_code=False, api_name="/chat_load_model")
