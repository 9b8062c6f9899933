"""The Quantize tab through its public API (gradio_client) and in a real headless Chromium."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.browser_helpers import open_accordion, open_tab
from ui.quantize_tab import BUILT_IN, DEFAULT_VARIANTS, OWN_CALIBRATION, UPLOADED_CALIBRATION


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
    assert "gpt2 [svd-llm]" in message and "with this comparison's agreement and perplexity" in message
    # Another cut is another model: it gets a name of its own, and without this comparison's figures
    message = client.predict(folder, "Language model", "svd-llm", 0.5, 0.3, OWN_CALIBRATION, None,
                             api_name="/quantize_load_chat")
    message = message[0] if isinstance(message, (list, tuple)) else message
    assert "gpt2 [svd-llm] #" in message and "a name of its own" in message and "without figures" in message


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


# Records, while a comparison runs, whether progress shows on the status line and whether any progress overlay
# covers a result area (the table or a plot).
WATCH_PROGRESS_JS = """() => {
  const seen = window.quantizeProgress = {status: false, covered: []};
  const busy = id => document.getElementById(id)?.querySelector('.eta-bar, .progress-text, .progress-level');
  new MutationObserver(() => {
    if (busy('quantize-status')) seen.status = true;
    for (const id of ['quantize-table', 'quantize-size-plot', 'quantize-speed-plot'])
      if (busy(id) && !seen.covered.includes(id)) seen.covered.push(id);
  }).observe(document.body, {subtree: true, childList: true, attributes: true});
}"""
READ_TABLE_JS = """() => {
  const grid = document.querySelector('#quantize-table [role=grid]');
  const head = [...grid.querySelectorAll('[role=columnheader]')].map(h => h.title);
  return [...grid.querySelectorAll('[role=row][data-index]')].map(row => Object.fromEntries(
    [...row.querySelectorAll('[role=gridcell]')].map((cell, i) => [head[i], cell.innerText.trim()])));
}"""
QUALITY = re.compile(r"(\d+)% same next tokens as fp32, perplexity ([\d.]+) \(fp32 ([\d.]+)\), as the Quantize tab "
                     r"measured it against the real fp32 model on ([\d,]+) tokens of assets/eval_text.txt")


@pytest.mark.browser
def test_results_in_the_browser(page, tiny_lm_dirs, screenshot_dir):
    """The default selection (plus fp16, to see a row that cannot run here) streams its rows with the progress on
    the status line alone; a variant loaded into Chat shows the figures this comparison measured against fp32."""
    tab = open_tab(page, "quantize")
    model = tab.get_by_label("Model", exact=True).first
    model.fill(str(tiny_lm_dirs["llama"]))
    model.press("Enter")
    tab.get_by_role("checkbox", name="fp16:").check()
    tab.get_by_role("checkbox", name="onnx-int4:").uncheck()  # an export: the ONNX tests cover it
    settings = open_accordion(tab, "Measurement settings")
    for label, value in (("Evaluation tokens", "128"), ("Decode tokens", "4")):
        box = settings.get_by_label(f"number input for {label}", exact=False)
        box.fill(value)
        box.press("Enter")
    page.evaluate(WATCH_PROGRESS_JS)
    tab.get_by_role("button", name="Compare variants").click()
    tab.get_by_text("Done.").wait_for(timeout=120_000)
    tab.locator(".js-plotly-plot").first.wait_for()
    page.screenshot(path=str(screenshot_dir / "quantize_results.png"), full_page=True)
    progress = page.evaluate("() => window.quantizeProgress")
    assert progress["status"] and not progress["covered"], progress
    rows = {row["variant"]: row for row in page.evaluate(READ_TABLE_JS)}
    assert list(rows)[0] == "fp32" and set(rows) == {*DEFAULT_VARIANTS, "fp16"} - {"onnx-int4"}, list(rows)
    assert "needs a CUDA GPU" in rows["fp16"]["notes"]
    loaded = [name for name, row in rows.items() if row["status"] == "ok"][-1]  # the picker's default
    tab.get_by_role("button", name="Load variant into Chat").click()
    if not page.get_by_role("tab", name="💬 Chat").count():  # the Quantize tab alone: nothing to check in Chat
        tab.get_by_text("Registered").wait_for(timeout=60_000)
        return
    chat = page.locator("#tab-chat")
    chat.get_by_text("as the Quantize tab measured it").wait_for(timeout=60_000)
    page.screenshot(path=str(screenshot_dir / "quantize_variant_in_chat.png"))
    summary = chat.get_by_text("same next tokens as fp32").first.inner_text()
    agreement, perplexity, fp32, tokens = QUALITY.search(summary).groups()
    assert f"[{loaded}]" in chat.get_by_label("Chat model", exact=True).first.input_value()
    # The table rounds to 4 significant digits, Chat to 2 decimals
    assert int(agreement) == round(float(rows[loaded]["top1_agreement"]) * 100), summary
    assert float(perplexity) == pytest.approx(float(rows[loaded]["perplexity"]), rel=1e-3), summary
    assert float(fp32) == pytest.approx(float(rows["fp32"]["perplexity"]), rel=1e-3), summary
    assert float(perplexity) != float(fp32) and int(tokens.replace(",", "")) == 128, summary
