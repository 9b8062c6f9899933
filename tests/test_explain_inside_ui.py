"""The logit lens, patching and contrast views as a user drives them: through the public API (gradio_client, tiny
models) and in headless Chromium on the packaged SmolLM2 (screenshots in artifacts/screenshots/)."""
from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest

from core.common.stopping import RunControl
from core.common.work_queue import WorkQueue
from core.explain.examples import EXAMPLES
from core.lessons.links import from_query
from tests.test_explain_inside import CLEAN, CORRUPTED, FOIL, TARGET
from ui.explain_inside import InsideHandlers


def _plot(value) -> dict:
    return json.loads(value["plot"])


def test_logit_lens_and_a_cell_through_the_api(client, tiny_lm_dirs):
    status, heatmap, lines, top, row, position = client.predict(str(tiny_lm_dirs["llama"]), CLEAN, "Paris, <b>dog</b>",
                                                                api_name="/explain_lens")
    assert "2 layers × 17 positions" in status and "the model predicts" in status
    cells = _plot(heatmap)["data"][0]
    assert cells["type"] == "heatmap" and len(cells["text"]) == 3 and len(cells["text"][0]) == 17  # token text shown
    assert "click for the top-10" in cells["customdata"][0][0]
    assert row["maximum"] == 2 and position["value"] == 16 and "layer 1, position 16" in top
    names = [trace["name"] for trace in _plot(lines)["data"]]
    assert "(the model's answer)" in names[0] and "' Paris'" in names and all("<b>" not in n for n in names)
    top, lines = client.predict(0, 3, api_name="/explain_lens_cell")
    assert "embeddings, position 3" in top and top.count("<tr>") == 11
    assert "Position 3" in _plot(lines)["layout"]["title"]["text"]


def test_patching_and_contrast_through_the_api(client, tiny_lm_dirs):
    model = str(tiny_lm_dirs["phi3"])
    status, figure = client.predict(model, CLEAN, CORRUPTED, TARGET, FOIL, ["resid", "mlp"], api_name="/explain_patching")
    assert "patched runs in" in status and "Patching the MLP output" in status
    panels = _plot(figure)["data"]
    assert [p["type"] for p in panels] == ["heatmap", "heatmap"] and "restores" in panels[0]["customdata"][0][-1]
    status, output, coloured, bars = client.predict(model, CLEAN, TARGET, FOIL, "shap", 40, api_name="/explain_contrast")
    assert "SHAP (Partition explainer)" in status and "model evaluations" in status
    assert output["choices"][0][0] == "' Paris' − ' dog'" and "Caveat:" in coloured and "add up" in coloured
    coloured, bars = client.predict(2, api_name="/explain_contrast_output")
    assert "' dog'" in _plot(bars)["layout"]["title"]["text"]
    status, *_ = client.predict(model, CLEAN, TARGET, FOIL, "gradient", 40, api_name="/explain_contrast")
    assert "Gradient × input · one forward and backward pass" in status


def test_bad_input_gets_a_message_and_the_app_keeps_serving(client, tiny_lm_dirs, tiny_classifier_dir):
    model = str(tiny_lm_dirs["gpt2"])
    status, figure = client.predict(model, CLEAN, "The capital of France is", TARGET, FOIL, ["resid"],
                                    api_name="/explain_patching")
    assert status.startswith("⚠️ The clean prompt is 17 tokens and the corrupted prompt 5") and figure is None
    status, _ = client.predict(model, CLEAN, CORRUPTED, "London", FOIL, ["resid"], api_name="/explain_patching")
    assert "The clean answer ' London' is" in status and "tokens for this model" in status
    status, _ = client.predict(model, CLEAN, CORRUPTED, TARGET, FOIL, [], api_name="/explain_patching")
    assert status.startswith("⚠️ Tick at least one")
    status, *_ = client.predict(str(tiny_classifier_dir), "I loved it", "", api_name="/explain_lens")
    assert "is a text classifier" in status
    status, *_ = client.predict(model, CLEAN * 8, "", api_name="/explain_lens")
    assert "this view takes at most 64" in status
    # Stop answers at once (an earlier test's run left this session's flag behind, so it may say "Stopping").
    assert client.predict(api_name="/explain_patch_stop") in ("Nothing is running.", "⏹️ Stopping after the current batch…")
    status, *_ = client.predict(model, CLEAN, "", api_name="/explain_lens")
    assert "the model predicts" in status  # still serving


class Names(dict):
    """Stands in for the tab's components: each one is its own name, so a handler's outputs read by name."""

    def __missing__(self, key):
        return key


def test_a_sweep_waits_in_the_heavy_queue_and_stop_cancels_it_there(services, tiny_lm_dirs):
    work = WorkQueue(slots=1)
    handlers = InsideHandlers(SimpleNamespace(manager=services.manager, work=work), Names())
    seen, result, control = [], {}, RunControl()
    with work.run(RunControl(), "another user's run"):
        worker = threading.Thread(target=lambda: result.update(handlers.patching(
            control, str(tiny_lm_dirs["llama"]), CLEAN, CORRUPTED, TARGET, FOIL, ["resid"],
            progress=lambda fraction, desc=None: seen.append(desc))))
        worker.start()
        deadline = time.monotonic() + 60
        while not any("you are 1st in line" in (s or "") for s in seen) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert control.stop()
        worker.join(timeout=60)
    assert result["patch_status"].startswith("⚠️ Cancelled while waiting in line") and result["patch_figure"] is None


def test_examples_and_lessons_fill_the_views(client):
    example = EXAMPLES["agreement"]
    filled = client.predict("agreement", api_name="/explain_example")
    assert example.clean in filled and example.corrupted in filled and f"{example.target}, {example.foil}" in filled
    opened = client.predict(name="patching", api_name="/open_lesson")
    assert EXAMPLES["landmark"].corrupted in opened and any("where is the fact kept" in str(v) for v in opened)
    odd = from_query({"tab": "lens", "example": "<script>"})  # a link is data: an unknown example is named, not used
    assert odd.example == "" and "There is no example" in odd.messages[0] and odd.sub_tab == "explain_lens_view"


@pytest.mark.real_model
@pytest.mark.browser
def test_each_view_in_chromium_on_smollm2(page, app_url, screenshot_dir):
    """The logit-lens lesson link on SmolLM2 (the landmark pair): the lens and a clicked cell, the patching map,
    the contrast."""
    page.goto(app_url + "?lesson=logit-lens")
    tab = page.locator("#tab-explain")
    run = tab.get_by_role("button", name="Run the logit lens")
    run.wait_for(timeout=60_000)  # the lesson opened the Logit lens sub-tab
    assert tab.get_by_label("Text (for a language model: the prompt)").input_value() == EXAMPLES["landmark"].clean
    assert "SmolLM2" in tab.get_by_label("Model", exact=True).input_value()
    run.click()
    tab.get_by_text("the lens has it on top from", exact=False).wait_for(timeout=180_000)
    heatmap = tab.locator("#explain-lens-heatmap .js-plotly-plot")
    heatmap.wait_for(timeout=30_000)
    heatmap.scroll_into_view_if_needed()
    box = heatmap.locator(".nsewdrag").first.bounding_box()  # the plotting area of the main heatmap
    x, y = box["x"] + box["width"] * 0.97, box["y"] + box["height"] * 0.2  # the last position, a late layer
    page.mouse.move(x, y)  # a person hovers before clicking: plotly picks the cell on hover
    page.mouse.click(x, y)
    tab.locator("#explain-lens-top").get_by_text("position 8", exact=False).wait_for(timeout=30_000)
    page.wait_for_timeout(500)
    page.screenshot(path=str(screenshot_dir / "explain_lens.png"), full_page=True)
    top = tab.locator("#explain-lens-top").inner_text()
    assert "layer 2" in top and "layer 29" not in top  # a late layer's cell, not the output row shown after the run

    tab.get_by_role("tab", name="Activation patching").click()
    assert tab.get_by_label("Corrupted prompt (same number of tokens)").input_value() == EXAMPLES["landmark"].corrupted
    tab.get_by_role("button", name="Run patching").click()
    tab.get_by_text("patched runs in", exact=False).wait_for(timeout=180_000)
    tab.get_by_text("Activation patching: which states carry", exact=False).wait_for(timeout=30_000)
    page.wait_for_timeout(500)
    page.screenshot(path=str(screenshot_dir / "explain_patching.png"), full_page=True)

    tab.get_by_role("tab", name="Why this token, not that one").click()
    tab.get_by_role("button", name="Explain the contrast").click()
    tab.get_by_text("one forward and backward pass", exact=False).wait_for(timeout=120_000)
    tab.get_by_text("Strongest tokens for", exact=False).wait_for(timeout=30_000)
    page.wait_for_timeout(500)
    page.screenshot(path=str(screenshot_dir / "explain_contrast.png"), full_page=True)
    assert "Caveat:" in tab.locator(".shap-text").locator("..").inner_text()
