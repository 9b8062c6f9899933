"""The Classify & NER tab as a user meets it: the public API through gradio_client, and a real browser."""
from __future__ import annotations

import pytest
from gradio_client import handle_file

from core.classify.ood import MAHALANOBIS
from core.models.paths import assets_dir
from tests.browser_helpers import open_tab
from ui.classify_tab import CLASSIFIER, ZERO_SHOT_MODE


def classify(client, model_dir, text, mode=CLASSIFIER, labels="sports, politics", zero_shot_model=None, method="auto"):
    return client.predict(mode, str(model_dir), str(zero_shot_model or model_dir), labels, "This text is about {}.",
                          text, 0.7, method, api_name="/classify_text")


def test_classify_and_zero_shot_through_the_api(client, tiny_classifier_dir):
    verdict, chart = classify(client, tiny_classifier_dir, "What a lovely day")
    assert verdict.startswith("## ") and ("negative" in verdict or "positive" in verdict)
    assert "threshold 0.70" in verdict and chart is not None
    verdict, _ = classify(client, tiny_classifier_dir, "The striker scored", mode=ZERO_SHOT_MODE)
    assert ("sports" in verdict or "politics" in verdict) and "embedding similarity" in verdict


def test_bad_single_inputs_get_messages(client, tiny_classifier_dir):
    verdict, chart = classify(client, tiny_classifier_dir, "   ")
    assert verdict.startswith("⚠️") and "empty" in verdict and chart is None
    verdict, _ = classify(client, tiny_classifier_dir, "text", mode=ZERO_SHOT_MODE, labels="only-one")
    assert "at least two" in verdict
    verdict, _ = classify(client, "/no/such/folder", "text")
    assert verdict.startswith("⚠️") and "Cannot load" in verdict
    verdict, _ = classify(client, tiny_classifier_dir, "text", method=MAHALANOBIS)
    assert verdict.startswith("⚠️") and "needs statistics" in verdict  # a model without them says so


def test_batch_upload_and_label(client, tiny_classifier_dir, tmp_path):
    example = handle_file(str(assets_dir() / "classify_examples.csv"))
    column, info = client.predict(example, api_name="/classify_upload")
    assert "10 rows" in info
    # the gr.State output (the stop flag) is not part of the public API: three values come back
    status, table, download = client.predict(CLASSIFIER, str(tiny_classifier_dir), str(tiny_classifier_dir),
                                             "a, b", "{}", example, "review", 0.7, "auto", api_name="/classify_batch")
    assert "Labelled 10 texts" in status and len(table["data"]) == 10 and download.endswith(".csv")
    status, _, _ = client.predict(CLASSIFIER, str(tiny_classifier_dir), str(tiny_classifier_dir), "a, b", "{}",
                                  example, "body", 0.7, "auto", api_name="/classify_batch")
    assert status.startswith("⚠️") and "no column 'body'" in status
    binary = tmp_path / "image.csv"
    binary.write_bytes(b"\x00\x01\x02PNG" * 100)
    _, info = client.predict(handle_file(str(binary)), api_name="/classify_upload")
    assert "binary" in info


def test_ner_through_the_api(client, tiny_ner_dir):
    status, spans, table = client.predict(str(tiny_ner_dir), "Ada Lovelace lived in London.", api_name="/classify_ner")
    assert "entities" in status and spans is not None
    status, _, _ = client.predict(str(tiny_ner_dir), "", api_name="/classify_ner")
    assert status.startswith("⚠️")


@pytest.mark.browser
@pytest.mark.real_model
def test_both_sub_tabs_in_a_browser(page, screenshot_dir):
    """Click an example, run offline models (zero-shot MiniLM, spaCy) and capture each sub-tab."""
    tab = open_tab(page, "classify")
    tab.get_by_text("The striker scored twice").first.click()
    page.wait_for_timeout(1_500)  # the example sets mode, text and labels through events; let them land
    tab.get_by_role("button", name="Classify", exact=True).click()
    tab.get_by_text("normalised entropy").first.wait_for(timeout=120_000)
    page.wait_for_timeout(1_000)
    page.screenshot(path=str(screenshot_dir / "classify_text.png"), full_page=True)
    tab.get_by_role("tab", name="Named entities").click()
    tab.get_by_text("Angela Merkel met").first.click()
    page.wait_for_timeout(1_000)
    tab.get_by_role("button", name="Find entities").click()
    tab.get_by_text("entities · types").first.wait_for(timeout=60_000)
    page.wait_for_timeout(1_000)
    page.screenshot(path=str(screenshot_dir / "classify_ner.png"), full_page=True)
    assert tab.get_by_text("PERSON").count() > 0
