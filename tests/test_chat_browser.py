"""Nothing a student types is lost, and the page says what it does, in a real browser on the default model:
a message typed while a reply streams, a failed Load while a reply waits in line, an empty system prompt."""
from __future__ import annotations

import pytest

from core.chat.sampling import SamplingSettings
from tests.browser_helpers import open_accordion, open_tab

pytestmark = [pytest.mark.browser, pytest.mark.real_model]


def set_max_new_tokens(tab, n: int) -> None:
    field = tab.get_by_label("Max new tokens").first
    field.fill(str(n))
    field.press("Enter")


def wait_for_reply(tab, n: int) -> None:
    """Until the conversation holds `n` finished replies."""
    tab.page.wait_for_function(
        "n => document.querySelectorAll(\"#tab-chat [data-testid='bot']\").length >= n && "
        "document.querySelector('#chat-status').innerText.includes('Last reply')", arg=n, timeout=180_000)


def test_a_message_typed_while_a_reply_streams_is_sent_when_it_ends(page, screenshot_dir):
    tab = open_tab(page, "chat")
    set_max_new_tokens(tab, 120)  # long enough to type the next message while it streams
    box = tab.locator("#chat-message textarea")
    box.fill("Tell me a story about a lighthouse.")
    box.press("Enter")
    tab.locator("#chat-status").get_by_text("You can type your next message now").wait_for(timeout=60_000)
    box.fill("Name a colour.")
    box.press("Enter")  # while the first reply streams
    assert box.input_value() == "Name a colour."  # kept in the box until it is sent
    page.screenshot(path=str(screenshot_dir / "chat_type_ahead.png"), full_page=True)
    page.wait_for_function("() => document.querySelectorAll(\"#tab-chat [data-testid='user']\").length >= 2",
                           timeout=180_000)
    wait_for_reply(tab, 2)
    users = tab.locator("[data-testid='user']")
    assert users.nth(1).inner_text().strip().startswith("Name a colour.") and box.input_value() == ""


def test_a_failed_load_leaves_a_reply_waiting_in_line_alone(page, services, screenshot_dir):
    tab = open_tab(page, "chat")
    served = services.chat.serve(services.default_chat_model)
    engine = served.engine
    full, eos = engine.scheduler.max_batch, engine.eos_ids
    engine.scheduler.max_batch = lambda: 1  # one reply at a time, and another user's, without an end, takes the place
    engine.eos_ids = set()
    blocker = engine.submit(served.tokenizer("Count to a thousand.")["input_ids"],
                            SamplingSettings(temperature=0, max_new_tokens=2000))
    try:
        set_max_new_tokens(tab, 8)
        box = tab.locator("#chat-message textarea")
        box.fill("Name a colour.")
        box.press("Enter")
        tab.locator("[data-testid='bot']").get_by_text("in line", exact=False).wait_for(timeout=60_000)
        picker = tab.get_by_label("Chat model")
        picker.fill("nobody/nothing")
        picker.press("Enter")  # picking a model loads it
        tab.get_by_text("Still using", exact=False).first.wait_for(timeout=60_000)
        page.screenshot(path=str(screenshot_dir / "chat_failed_load_while_waiting.png"), full_page=True)
        assert picker.input_value() != "nobody/nothing"  # the picker shows what serves
        blocker.cancel()
        wait_for_reply(tab, 1)
    finally:
        blocker.cancel()
        engine.scheduler.max_batch, engine.eos_ids = full, eos
    status = tab.locator("#chat-status").inner_text()
    assert "stopped" not in status and "ended" not in status, status


def test_an_empty_system_prompt_names_what_the_template_writes_and_none_sends_none(page):
    tab = open_tab(page, "chat")
    set_max_new_tokens(tab, 4)
    tab.get_by_role("textbox", name="System prompt").fill("")
    box = tab.locator("#chat-message textarea")
    box.fill("Hi")
    box.press("Enter")
    wait_for_reply(tab, 1)
    tab.locator("#chat-status").get_by_text("chat template writes its own", exact=False).wait_for()
    assert "named SmolLM" in tab.locator("#chat-status").inner_text()
    tab.get_by_label("No system prompt").check()
    tab.get_by_role("button", name="Retry").click()
    page.wait_for_function("() => !document.querySelector('#chat-status').innerText.includes('writes its own') &&"
                           " document.querySelector('#chat-status').innerText.includes('Last reply')",
                           timeout=120_000)
    open_accordion(tab, "Prompt sent to the model")
    prompt = tab.locator("#chat-prompt textarea").input_value()
    assert "named SmolLM" not in prompt and "Hi" in prompt
