"""The Evaluate tab through its public API (gradio_client) and in a real headless Chromium."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from gradio_client import handle_file

from core.evaluate.multiple_choice import builtin_tasks
from core.models.registry import DEFAULT_CHAT_MODEL
from tests.browser_helpers import open_tab
from ui.evaluate_tab import BUILT_IN, PASTED, UPLOADED_TASK

TEAM_TASK = builtin_tasks()[0].name


def perplexity(client, models, precisions, source=BUILT_IN, pasted="", upload=None, length=64, stride=32):
    return client.predict(models, precisions, source, pasted, upload, length, stride, api_name="/evaluate_perplexity")


def choices(client, models, precisions, task=TEAM_TASK, upload=None, fewshot="", resamples=200):
    return client.predict(models, precisions, task, upload, fewshot, resamples, api_name="/evaluate_choices")


def test_perplexity_for_two_models_and_precisions_in_one_table(client, tiny_lm_dirs):
    models = [str(tiny_lm_dirs["gpt2"]), str(tiny_lm_dirs["llama"])]
    table, _plot, status, _items, history = perplexity(client, models, ["fp32", "bf16"])
    rows = table["data"]
    header = table["headers"]
    assert len(rows) == 4 and {r[header.index("precision")] for r in rows} == {"fp32", "bf16"}
    assert all(r[header.index("status")] == "ok" and r[header.index("bits_per_byte")] > 0 for r in rows)
    assert {r[header.index("context")] for r in rows} == {64} and {r[header.index("stride")] for r in rows} == {32}
    assert "Done" in status and "windows of at most 64 tokens moving 32" in status
    assert len(history["data"]) >= 4


def test_bad_input_is_named_and_the_run_keeps_the_good_models(client, tiny_lm_dirs, tmp_path):
    llama = str(tiny_lm_dirs["llama"])
    *_, status, _items, _history = perplexity(client, [llama], ["fp32"], source=PASTED, pasted="   ")
    assert "The text is empty" in status
    bad = tmp_path / "task.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 1}) + "\n"
                   + json.dumps({"question": "q2", "choices": ["a", "b", "c"], "answer": 0}) + "\n")
    *_, status, _items, _history = choices(client, [llama], ["fp32"], UPLOADED_TASK, handle_file(str(bad)))
    assert "row 2 has 3 choices but row 1 has 2" in status
    table, _plot, status, _items, _history = perplexity(client, ["no/such-model", llama], ["fp32"])
    assert "⚠️ no/such-model [fp32]" in status and [r[3] for r in table["data"]] == ["failed", "ok"]


def test_a_team_task_scores_offline_with_per_item_results_and_export(client, tiny_lm_dirs):
    model = str(tiny_lm_dirs["phi"])
    table, _plot, status, items, _history = choices(client, [model], ["fp32"])
    header, row = table["headers"], table["data"][0]
    assert row[header.index("status")] == "ok" and row[header.index("items")] == 30 and "[" in row[header.index("acc")]
    per_item = pd.read_csv(items["value"])
    assert len(per_item) == 30 and {"question", "correct", "correct_norm", "loglikelihoods"} <= set(per_item.columns)
    files, message = client.predict(api_name="/evaluate_export")
    assert "Exported" in message
    paths = files["value"] if isinstance(files, dict) else files
    exported = json.loads(Path(next(str(p) for p in paths if str(p).endswith(".json"))).read_text())
    assert exported[-1]["rows"][0]["model_id"] == model and len(exported[-1]["data_sha256"]) == 64


@pytest.mark.browser
@pytest.mark.real_model
def test_scoring_a_team_task_in_the_browser(page, screenshot_dir):
    tab = open_tab(page, "evaluate")
    tab.get_by_role("tab", name="Multiple choice").click()
    tab.get_by_role("checkbox", name="fp32", exact=True).check()  # the default model as Chat serves it, and at fp32
    tab.get_by_role("button", name="Score the task").click()
    tab.get_by_text("Done").first.wait_for(timeout=300_000)
    tab.locator(".js-plotly-plot").first.wait_for()
    assert tab.get_by_text(DEFAULT_CHAT_MODEL).count() >= 1
    page.screenshot(path=str(screenshot_dir / "evaluate_choices.png"), full_page=True)
