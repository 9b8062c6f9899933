"""The Quantize tab through its public API (gradio_client) and in a real headless Chromium."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser_helpers import open_tab
from ui.quantize_tab import BUILT_IN, OWN_CALIBRATION, UPLOADED_CALIBRATION


def _tab_present(client) -> bool:
    return "/quantize_compare" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]


def test_compare_and_load_into_chat_through_the_api(client, tiny_lm_dirs):
    if not _tab_present(client):
        pytest.fail("the quantize tab is not in this app: set LLMPG_TABS to include quantize or unset it")
    folder = str(tiny_lm_dirs["gpt2"])
    table, _size, _speed, csv, status, variant = client.predict(
        folder, "Language model", ["int8-dynamic", "fp16", "pruned", "wanda", "svd-llm"], 0.5, 0.2, OWN_CALIBRATION,
        None, BUILT_IN, None, None, 128, 4, api_name="/quantize_compare")
    assert [row[0] for row in table["data"]] == ["fp32", "int8-dynamic", "fp16", "pruned", "wanda", "svd-llm"]
    assert "Done." in status and "fp16" in status and "calibrated on assets/calibration_text.txt" in status
    assert "Evaluated on assets/eval_text.txt" in status
    assert [c[1] for c in variant["choices"]] == ["fp32", "int8-dynamic", "pruned", "wanda", "svd-llm"]
    lines = Path(csv["value"]).read_text().splitlines()
    assert lines[0].startswith("variant,status") and len(lines) == 7
    message = client.predict(folder, "Language model", "svd-llm", 0.5, 0.2, OWN_CALIBRATION, None,
                             api_name="/quantize_load_chat")
    message = message[0] if isinstance(message, (list, tuple)) else message
    assert "gpt2 [svd-llm]" in message


def test_missing_upload_is_reported(client, tiny_lm_dirs):
    *_, status, _variant = client.predict(str(tiny_lm_dirs["gpt2"]), "Language model", ["int8-dynamic"], 0.5, 0.2,
                                          OWN_CALIBRATION, None, "Uploaded text file", None, None, 128, 4,
                                          api_name="/quantize_compare")
    assert "Upload a .txt file" in status
    *_, status, _variant = client.predict(str(tiny_lm_dirs["gpt2"]), "Language model", ["wanda"], 0.5, 0.2,
                                          UPLOADED_CALIBRATION, None, BUILT_IN, None, None, 128, 4,
                                          api_name="/quantize_compare")
    assert "calibration file" in status


@pytest.mark.parametrize("content, message", [(b"   \n", "calibration text is empty"),
                                              (b"\x00\xff\xfe binary", "looks like a binary file")])
def test_empty_or_binary_calibration_file_is_refused(client, tiny_lm_dirs, tmp_path, content, message):
    from gradio_client import handle_file

    upload = tmp_path / "calibration.txt"
    upload.write_bytes(content)
    *_, status, _variant = client.predict(str(tiny_lm_dirs["gpt2"]), "Language model", ["wanda"], 0.5, 0.2,
                                          UPLOADED_CALIBRATION, handle_file(str(upload)), BUILT_IN, None, None, 128, 4,
                                          api_name="/quantize_compare")
    assert message in status and "Done" not in status, status


@pytest.mark.browser
def test_results_in_the_browser(page, tiny_lm_dirs, screenshot_dir):
    tab = open_tab(page, "quantize")
    model = tab.get_by_label("Model", exact=True).first
    model.fill(str(tiny_lm_dirs["llama"]))
    model.press("Enter")
    for name in ("bf16", "bnb-nf4", "low-rank"):  # keep the run short: four variants on 128 tokens
        tab.get_by_role("checkbox", name=f"{name}:").uncheck()
    tab.get_by_text("Measurement settings").click()
    for label, value in (("Evaluation tokens", "128"), ("Decode tokens", "4")):
        box = tab.get_by_label(f"number input for {label}", exact=False)
        box.fill(value)
        box.press("Enter")
    tab.get_by_role("button", name="Compare variants").click()
    tab.get_by_text("Done.").wait_for(timeout=120_000)
    tab.get_by_text("int8-dynamic").first.wait_for()
    tab.locator(".js-plotly-plot").first.wait_for()
    page.screenshot(path=str(screenshot_dir / "quantize_results.png"), full_page=True)
    assert tab.get_by_text("needs a CUDA GPU").count() >= 1
    tab.get_by_role("button", name="Load variant into Chat").click()
    if page.get_by_role("tab", name="💬 Chat").count():  # the whole app: the chat tab opens on the new variant
        page.locator("#tab-chat").get_by_label("Chat model", exact=True).first.wait_for()
        page.wait_for_function("() => [...document.querySelectorAll('input')].some(i => i.value.includes('[svd-llm]'))",
                               timeout=60_000)
        page.screenshot(path=str(screenshot_dir / "quantize_variant_in_chat.png"))
    else:
        tab.get_by_text("Registered").wait_for(timeout=60_000)
