"""The Explain tab as a user drives it: through its public API (gradio_client) and in headless Chromium."""
from __future__ import annotations

import json
import time

import pytest

from core.models.registry import DEFAULT_CHAT_MODEL, OFFLINE_ENCODER
from tests.browser_helpers import open_tab

PROMPT = "The capital of France is"


def _plot(value) -> dict:
    return json.loads(value["plot"])


def test_attention_through_the_api(client, tiny_lm_dirs):
    status, heatmap, overview, layer, head = client.predict(str(tiny_lm_dirs["phi"]), PROMPT, 48, "One head", 5, 1,
                                                            api_name="/explain_attention")
    assert "2 layers x 4 heads" in status
    assert layer["maximum"] == 1 and layer["value"] == 1 and head["value"] == 1  # layer 5 clamped to the last one
    cells = _plot(heatmap)["data"][0]
    assert cells["type"] == "heatmap" and cells["z"]["shape"] == "5, 5"  # plotly 7 sends arrays as typed binary
    assert "attends to" in cells["text"][1][0]
    assert "All 2 layers (across) x 4 heads (down)" in _plot(overview)["layout"]["title"]["text"]


def test_bad_input_gets_a_message_and_the_app_keeps_serving(client, tiny_lm_dirs):
    status, heatmap, *_ = client.predict(str(tiny_lm_dirs["gpt2"]), "  ", 48, "One head", 0, 0, api_name="/explain_attention")
    assert status.startswith("⚠️ Type a sentence") and heatmap is None
    status, *_ = client.predict("no/such-model-here", PROMPT, 48, "Rollout", 0, 0, api_name="/explain_attention")
    assert status.startswith("⚠️ Cannot load 'no/such-model-here'")
    status, _output, coloured, bars = client.predict(OFFLINE_ENCODER, "I loved it", "", 20, 48, api_name="/explain_shap")
    assert "plain encoder with no output to explain" in status and coloured is None and bars is None
    status, *_ = client.predict(str(tiny_lm_dirs["gpt2"]), PROMPT * 20, 16, "Rollout", 0, 0, api_name="/explain_attention")
    assert "only the first 16 are explained" in status


def test_shap_on_a_classifier_through_the_api(client, tiny_classifier_dir):
    status, output, coloured, bars = client.predict(str(tiny_classifier_dir), "I loved this <b>movie</b>", "", 40, 48,
                                                    api_name="/explain_shap")
    assert "model evaluations" in status and "log-odds" in status
    assert output["choices"] == [["negative", 0], ["positive", 1]] and output["value"] in (0, 1)
    assert "&lt;" in coloured and "<b>movie" not in coloured  # the tokens of "<b>" are shown, escaped
    assert _plot(bars)["data"][0]["type"] == "bar"


@pytest.mark.real_model
@pytest.mark.browser
def test_both_views_in_chromium(page, screenshot_dir):
    """SmolLM2 (the offline chat model): attention heatmaps, then SHAP on the continuation " Paris"."""
    tab = open_tab(page, "explain")
    picker = tab.get_by_label("Model", exact=True)
    picker.fill(DEFAULT_CHAT_MODEL)
    picker.press("Enter")
    tab.get_by_label("Text (for a language model: the prompt)").fill(PROMPT)
    tab.get_by_role("button", name="Show attention").click()
    tab.get_by_text("30 layers x 9 heads").first.wait_for(timeout=120_000)
    tab.locator(".js-plotly-plot").nth(1).wait_for(timeout=30_000)
    page.screenshot(path=str(screenshot_dir / "explain_attention.png"), full_page=True)
    assert tab.get_by_text("Attention shows the mechanism").count() == 1

    tab.get_by_role("tab", name="SHAP attributions").click()
    tab.get_by_label("Continuation to explain (language models)").fill("Paris")
    tab.get_by_role("button", name="Explain with SHAP").click()
    tab.locator(".shap-text").wait_for(timeout=120_000)
    tab.get_by_text("Strongest tokens for").first.wait_for(timeout=30_000)
    page.screenshot(path=str(screenshot_dir / "explain_shap.png"), full_page=True)
    assert "France" in tab.locator(".shap-text").inner_text()


def test_stop_button_ends_a_running_shap(client, tiny_classifier_dir):
    long_text = " ".join(["the film was wonderful but far too long"] * 12)
    job = client.submit(str(tiny_classifier_dir), long_text, "", 2000, 128, api_name="/explain_shap")
    deadline = time.monotonic() + 60
    while not job.status().progress_data and time.monotonic() < deadline:  # SHAP's batches report progress
        time.sleep(0.05)
    assert client.predict(api_name="/explain_stop").startswith("⏹️")
    status, *_ = job.result(timeout=60)
    assert status.startswith("⚠️ Stopped after")
