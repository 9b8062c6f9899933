"""The Bias tab as a user meets it: through gradio_client and in headless Chromium."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from tests.browser_helpers import open_tab

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def bias_client(app_url):
    # A client of its own: the report collects this session's probes only.
    return Client(app_url, verbose=False)


def test_probes_and_report_through_the_api(bias_client, tiny_lm_dirs, tiny_classifier_dir, tmp_path):
    status, table, bars, hist, notes = bias_client.predict(None, str(tiny_lm_dirs["gpt2"]), "fp32", 16, 100, 0,
                                                           api_name="/bias_crows")
    assert "pairs prefer the stereotyping sentence" in status and table["data"][0][0] == "overall"
    assert bars is not None and hist is not None and "Caveat" in notes
    status, disparities, *_ = bias_client.predict(None, str(tiny_classifier_dir), "auto", 100, 0, api_name="/bias_fairness")
    assert "positive label 'positive'" in status
    assert [row[0] for row in disparities["data"]] == ["demographic_parity_difference", "demographic_parity_ratio",
                                                       "equalized_odds_difference"]
    one_group = tmp_path / "one_group.csv"
    one_group.write_text("text,label,group\ngood,positive,a\nbad,negative,a\n")
    status, *_ = bias_client.predict(handle_file(str(one_group)), str(tiny_classifier_dir), "auto", 100, 0,
                                     api_name="/bias_fairness")
    assert status.startswith("⚠️") and "only one group" in status
    message, html_file, json_file = bias_client.predict(api_name="/bias_report")
    assert "2 probe(s)" in message
    report = json.loads(Path(json_file).read_text())
    assert [s["probe"] for s in report["sections"]] == ["crows_pairs", "fairness"]
    assert report["sections"][0]["models"] == {"language model": str(tiny_lm_dirs["gpt2"])}
    assert "Plotly.newPlot" in Path(html_file).read_text()


def test_counterfactual_and_generation_through_the_api(bias_client, tiny_lm_dirs, tiny_classifier_dir):
    lm, cls = str(tiny_lm_dirs["llama"]), str(tiny_classifier_dir)
    out = bias_client.predict("The {group} was a doctor.\nI met a {group}.", "gender: woman, man\nage: old, young",
                              ["gender"], cls, lm, True, True, "auto", "fp32", 100, 0, api_name="/bias_counterfactual")
    status, table, variants = out[0], out[1], out[-1]
    assert "Scored 4 sentences" in status and [row[0] for row in table["data"]] == ["gender"]
    assert len(variants["data"]) == 4
    prompts = bias_client.predict("age", api_name="/bias_generation_prompts")
    assert "old:" in prompts
    args = ("woman: The woman worked as\nman: The man worked as", lm, cls, True, "auto", 2, 4, 1.0, 0.95, "fp32", 100, 3)
    first = bias_client.predict(*args, api_name="/bias_generation")
    again = bias_client.predict(*args, api_name="/bias_generation")
    assert "4 continuations from 2 prompts" in first[0] and first[-1]["data"] == again[-1]["data"]


def test_missing_model_and_bad_templates_get_messages(bias_client):
    out = bias_client.predict("No slot here", "gender: woman, man", ["gender"], "/no/such/model", "/no/such/lm",
                              False, True, "auto", "fp32", 100, 0, api_name="/bias_counterfactual")
    assert out[0].startswith("⚠️") and "{group}" in out[0]
    out = bias_client.predict(None, "/no/such/lm", "fp32", 16, 100, 0, api_name="/bias_crows")
    assert out[0].startswith("⚠️") and "/no/such/lm" in out[0]


def _pick(tab, label: str, value: str) -> None:
    """Type a custom value (a local folder) into a model picker."""
    box = tab.get_by_label(label, exact=True)
    box.click()
    box.fill(value)
    box.press("Enter")


@pytest.mark.browser
def test_fairness_run_and_report_screenshots(page, app_url, tiny_classifier_dir, tiny_lm_dirs, screenshot_dir):
    tab = open_tab(page, "bias")
    _pick(tab, "Classifier", str(tiny_classifier_dir))
    _pick(tab, "Language model", str(tiny_lm_dirs["llama"]))
    tab.get_by_role("tab", name="Paired sentences").click()
    tab.get_by_role("button", name="Score pairs").click()
    tab.get_by_text("pairs prefer the stereotyping sentence").wait_for(timeout=60_000)
    tab.get_by_role("tab", name="Fairness").click()
    tab.get_by_role("button", name="Measure fairness").click()
    tab.get_by_text("overall accuracy").wait_for(timeout=60_000)
    tab.locator(".js-plotly-plot:visible").nth(1).wait_for(timeout=30_000)
    page.screenshot(path=str(screenshot_dir / "bias_fairness.png"), full_page=True)
    tab.get_by_role("tab", name="Report").click()
    tab.get_by_role("button", name="Build report").click()
    tab.get_by_text("Report with 2 probe(s)").wait_for(timeout=30_000)
    link = tab.locator("a[href*='bias-report-'][href$='.html']").first
    link.wait_for(state="attached", timeout=30_000)
    href = link.get_attribute("href")
    downloaded = page.request.get(href if href.startswith("http") else app_url.rstrip("/") + href)
    assert downloaded.ok
    report = page.context.new_page()
    report.set_content(downloaded.text())  # served as a download; render the same bytes offline
    report.locator(".js-plotly-plot").nth(3).wait_for(timeout=30_000)
    assert report.locator("h2").all_inner_texts() == ["Paired sentences (CrowS-Pairs format)", "Fairness on labelled data"]
    report.screenshot(path=str(screenshot_dir / "bias_report.png"), full_page=True)


def test_before_after_through_the_api(bias_client, tiny_classifier_dir, tmp_path):
    from tests.tiny_models import build_bert

    other = str(build_bert(tmp_path / "other", ["negative", "positive"], seed=1))
    templates, groups = "The {group} was a doctor.\nI met a {group}.", "gender: woman, man"
    status, table, figure, notes = bias_client.predict(other, str(tiny_classifier_dir), None, templates, groups,
                                                       ["gender"], "auto", "auto", 100, 0,
                                                       api_name="/bias_before_after")
    assert "mention a group word" in status and "Swap gap" in notes and figure is not None
    assert table["headers"] == ["measure", "before", "after", "change", "better"]
    same, *_ = bias_client.predict(other, other, None, templates, groups, ["gender"], "auto", "auto", 100, 0,
                                   api_name="/bias_before_after")
    assert same.startswith("⚠️") and "two different classifiers" in same


@pytest.mark.browser
def test_before_after_in_the_browser(page, tiny_classifier_dir, tmp_path, screenshot_dir):
    from tests.tiny_models import build_bert

    other = str(build_bert(tmp_path / "other", ["negative", "positive"], seed=1))
    tab = open_tab(page, "bias")
    tab.get_by_role("tab", name="Before / after").click()
    _pick(tab, "After (mitigated)", other)
    _pick(tab, "Before (unmitigated twin)", str(tiny_classifier_dir))
    tab.get_by_role("button", name="Compare before and after").click()
    tab.get_by_text("Same probes on both models", exact=False).wait_for(timeout=60_000)
    tab.locator(".js-plotly-plot:visible").first.wait_for(timeout=30_000)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(screenshot_dir / "bias_before_after.png"), full_page=True)
    assert tab.get_by_text("Swap gap:", exact=False).count() == 1
