"""Teachers' tools in a real browser: a lesson link, a branch from a clicked alternative, the teaching views, and a
phone where a tap (there is no hover) opens a token's alternatives. Screenshots go to artifacts/screenshots/."""
from __future__ import annotations

import pytest

from tests.browser_helpers import open_accordion, open_tab

pytestmark = [pytest.mark.browser, pytest.mark.real_model]


def send(tab, text: str) -> None:
    box = tab.locator("#chat-message textarea")
    box.fill(text)
    box.press("Enter")
    tab.locator("#chat-status").get_by_text("Last reply").wait_for(timeout=180_000)


def test_a_lesson_link_presets_the_page_and_locks_the_model(browser, app_url, screenshot_dir):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(app_url + "?lesson=temperature&seed=9")
    page.get_by_text("Temperature: how sure is the model?").first.wait_for(timeout=60_000)
    panel = page.locator("#tab-chat")
    assert panel.get_by_label("Prompt", exact=True).input_value() == "Write one sentence about the sea."
    assert panel.get_by_label("Model A").is_disabled()  # the lesson locks the model
    assert panel.get_by_label("Seed").first.input_value() == "9"
    panel.get_by_role("button", name="Compare", exact=True).click()
    panel.get_by_text("They part ways at token", exact=False).wait_for(timeout=180_000)
    page.screenshot(path=str(screenshot_dir / "lesson_compare.png"), full_page=True)
    panel.get_by_role("button", name="Share this setup").click()
    link = page.locator("#chat-share-link textarea")
    link.wait_for(timeout=30_000)
    shared = link.input_value()
    assert "tab=compare" in shared and "temperature_b=1.2" in shared and "seed_b=9" in shared, shared
    panel.get_by_role("tab", name="Conversation").click()  # the view on screen is what a link opens
    panel.get_by_role("button", name="Share this setup").click()
    page.wait_for_function("l => !l.value.includes('tab=compare')", arg=link.element_handle(), timeout=30_000)
    assert "tab=chat" in link.input_value()
    page.goto(app_url + "?tab=chat&temperature=99&model=../etc")  # out of range: a message and the defaults
    page.get_by_text("Temperature must be between 0 and 2", exact=False).wait_for(timeout=60_000)
    assert page.locator("#tab-chat").get_by_label("Temperature").first.input_value() == "0.7"
    context.close()


def test_a_lesson_for_explain_opens_it_with_the_teachers_note(page, app_url, screenshot_dir):
    page.goto(app_url + "?lesson=attention")
    note = page.locator("#lesson-notes-explain")
    note.get_by_text("For the teacher", exact=False).wait_for(timeout=60_000)
    assert "Attention: where does each word look?" in note.inner_text()
    assert page.locator("#tab-explain").is_visible() and not page.locator("#tab-chat").is_visible()
    assert page.locator("#tab-explain").get_by_label("Text", exact=False).first.input_value().startswith("The animal")
    page.screenshot(path=str(screenshot_dir / "lesson_explain.png"), full_page=True)
    open_tab(page, "chat")
    assert not page.locator("#lesson-notes-chat").is_visible()  # the note is not left in another tab


def test_clicking_an_alternative_token_branches_the_reply(page, screenshot_dir):
    tab = open_tab(page, "chat")
    tab.get_by_label("Temperature").first.fill("0")
    send(tab, "What is the capital of France?")
    token = tab.locator("#chat-token-view .tv-tok").nth(2)
    token.click()
    token.locator("button.tv-alt").nth(1).click()
    tab.locator("#chat-version").get_by_text("version 2 of 2").wait_for(timeout=120_000)
    page.screenshot(path=str(screenshot_dir / "chat_branch.png"), full_page=True)
    tab.locator("#chat-previous").click()
    tab.locator("#chat-version").get_by_text("version 1 of 2").wait_for(timeout=30_000)
    open_accordion(tab, "Save or restore the conversation")
    tab.get_by_role("button", name="Export Markdown + JSON").click()
    tab.get_by_text("13.0 KB", exact=False).or_(tab.get_by_text(" KB ⇣", exact=False)).first.wait_for(timeout=30_000)
    assert tab.get_by_text(".md", exact=False).count() >= 1  # both files are offered for download
    tab.get_by_role("tab", name="Sampling").click()
    tab.get_by_role("button", name="Show the stages").click()
    tab.get_by_text("Step 1: after", exact=False).wait_for(timeout=60_000)
    tab.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(screenshot_dir / "chat_sampling_steps.png"), full_page=True)
    tab.get_by_role("tab", name="Tokenizer").click()
    tab.get_by_role("button", name="Tokenize").click()
    tab.get_by_text("characters per token", exact=False).first.wait_for(timeout=60_000)
    page.screenshot(path=str(screenshot_dir / "chat_tokenizer.png"), full_page=True)


def test_on_a_phone_a_tap_opens_a_tokens_alternatives(browser, app_url, screenshot_dir):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(app_url)
    tab = open_tab(page, "chat")
    send(tab, "Name a colour.")
    token = tab.locator("#chat-token-view .tv-tok").first
    alternatives = token.locator(".tv-alts")
    assert not alternatives.is_visible()
    token.tap()
    alternatives.wait_for(state="visible", timeout=10_000)
    assert alternatives.locator(".tv-alt").count() == 5
    width = page.evaluate("document.documentElement.scrollWidth")
    page.screenshot(path=str(screenshot_dir / "phone_token_tap.png"), full_page=True)
    context.close()
    assert width <= 420  # nothing forces the page wider than the phone
