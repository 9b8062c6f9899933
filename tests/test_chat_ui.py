"""The chat tab through its public API (gradio_client) and in a real browser."""
from __future__ import annotations

import threading
import time

import pytest
from gradio_client import Client


def reply_text(chatbot: list[dict]) -> str:
    content = chatbot[-1]["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def load(client: Client, folder) -> str:
    info, _picker = client.predict(model_id=str(folder), allow_remote_code=False, api_name="/chat_load_model")
    return info


def test_load_a_folder_then_chat_through_the_api(client, tiny_lm_dirs):
    client.predict(api_name="/chat_clear")  # the client is shared: start from an empty conversation
    assert "✅" in load(client, tiny_lm_dirs["llama"]) and "chat template" in load(client, tiny_lm_dirs["llama"])
    job = client.submit(message="Hello there", temperature=0, max_new_tokens=6, api_name="/chat_send")
    chatbot, box, status, tokens, prompt, info, _version = job.result()
    assert [m["role"] for m in chatbot] == ["user", "assistant"]
    assert job.outputs()[0][1] == "" and box == {"__type__": "update"}  # the box is cleared once, then left alone
    assert "6 tokens" in reply_text(chatbot) and "tok/s" in status and "first token" in status
    assert "token-view" in tokens and prompt.endswith("<|im_start|>assistant\n") and "chat template" in info
    again = client.predict(temperature=0, max_new_tokens=6, api_name="/chat_retry")
    assert len(again[0]) == 2 and reply_text(again[0]).split("<sub>")[0] == reply_text(chatbot).split("<sub>")[0]
    chatbot, box, _tokens, _version = client.predict(api_name="/chat_undo")
    assert chatbot == [] and box == "Hello there"
    assert client.predict(message="  ", api_name="/chat_send")[2].startswith("⚠️")


def test_an_unknown_model_keeps_the_previous_one(client, tiny_lm_dirs):
    load(client, tiny_lm_dirs["gpt2"])
    info, picker = client.predict(model_id="no-such-org/no-such-model", allow_remote_code=False,
                                  api_name="/chat_load_model")
    assert "no-such-org/no-such-model" in info and "Offline choices" in info and str(tiny_lm_dirs["gpt2"]) in info
    assert picker == str(tiny_lm_dirs["gpt2"])  # the picker goes back to the model that serves
    chatbot, *_, prompt, _info, _version = client.predict(message="Hi", temperature=0, max_new_tokens=3,
                                                          api_name="/chat_send")
    assert prompt.endswith("User: Hi\nAssistant:")  # still the base gpt2 model, plain continuation
    client.predict(api_name="/chat_clear")


@pytest.fixture
def no_eos(services, monkeypatch):
    """Random tiny models can end a reply at any step: engines built now or earlier never see end of text."""
    monkeypatch.setattr("core.chat.serving.eos_ids", lambda *_: set())
    for served in services.chat.served():
        monkeypatch.setattr(served.engine, "eos_ids", set())


def test_two_users_chat_at_once_and_stop_only_their_own_reply(app_url, tiny_lm_dirs, no_eos):
    alice, bob = Client(app_url, verbose=False), Client(app_url, verbose=False)
    for user in (alice, bob):
        load(user, tiny_lm_dirs["phi"])
    long_reply = dict(message="Tell me a story", temperature=1.0, max_new_tokens=400, seed=1, api_name="/chat_send")
    alice_job = alice.submit(**long_reply)
    bob_reply = {}
    bob_thread = threading.Thread(target=lambda: bob_reply.setdefault(
        "out", bob.predict(message="Hi", temperature=1.0, max_new_tokens=40, seed=2, api_name="/chat_send")))
    bob_thread.start()
    while not alice_job.outputs():  # wait until alice's reply is streaming
        time.sleep(0.05)
    alice.predict(api_name="/chat_stop")
    alice_status = alice_job.result()[2]
    bob_thread.join()
    assert "stopped by user" in alice_status
    assert "40 tokens" in bob_reply["out"][2] and "max new tokens" in bob_reply["out"][2]


def test_eight_users_at_once_share_decode_steps_and_one_stop_leaves_the_rest(app_url, tiny_lm_dirs, no_eos):
    users = [Client(app_url, verbose=False) for _ in range(8)]
    for user in users:
        load(user, tiny_lm_dirs["llama"])
    jobs = [user.submit(message=f"Tell me about topic number {i}", temperature=0.8, max_new_tokens=60, seed=i,
                        api_name="/chat_send") for i, user in enumerate(users)]
    while not jobs[0].outputs():
        time.sleep(0.02)
    users[0].predict(api_name="/chat_stop")
    results = [job.result() for job in jobs]
    assert "stopped by user" in results[0][2]
    for chatbot, _box, status, *_ in results[1:]:
        assert "60 tokens" in status and "max new tokens" in status, status
    assert len({reply_text(r[0]) for r in results[1:]}) == 7  # each user got their own reply
    assert any("batched with" in r[2] for r in results[1:])


def test_changing_model_ends_a_running_reply_and_says_so(app_url, services, tiny_lm_dirs, no_eos):
    services.chat.serve(str(tiny_lm_dirs["phi3"]))  # built beforehand, so the switch comes while the reply runs
    user = Client(app_url, verbose=False)
    load(user, tiny_lm_dirs["gpt2"])
    job = user.submit(message="Go on", temperature=1.0, max_new_tokens=400, seed=3, api_name="/chat_send")
    while not job.outputs():
        time.sleep(0.05)
    assert "phi3" in load(user, tiny_lm_dirs["phi3"])
    assert "ended: you loaded another model" in job.result()[2]


@pytest.mark.browser
@pytest.mark.real_model
def test_browser_type_stream_stop(page, screenshot_dir):
    """A user types a question, watches the default model's reply stream, presses Stop."""
    page.get_by_role("tab", name="💬 Chat").click()
    box = page.locator("#chat-message textarea")
    box.fill("Write a long story about a dragon who learns to read.")
    box.press("Enter")
    bubble = page.locator("[data-testid='bot']").last
    bubble.wait_for(timeout=60_000)
    page.wait_for_function("() => { const b = [...document.querySelectorAll(\"[data-testid='bot']\")].pop();"
                           " return b && b.innerText.trim().split(/\\s+/).length >= 5; }", timeout=60_000)
    page.get_by_role("button", name="Stop").click()
    page.locator("#chat-status").get_by_text("stopped by user").wait_for(timeout=30_000)
    page.locator("#chat-token-view .tv-tok").first.wait_for(timeout=10_000)
    page.screenshot(path=str(screenshot_dir / "chat_stream_stop.png"), full_page=True)
    assert "stopped by user" in bubble.inner_text()
