"""Fine-tune tab as a user drives it: through gradio_client and in headless Chromium."""
from __future__ import annotations

import time
import uuid
from dataclasses import asdict

import pandas as pd
import pytest

from core.finetune.tasks import default_hyperparameters
from core.models.registry import TEXT_CLASSIFICATION
from tests.browser_helpers import open_accordion, open_tab

# Installed before a page's own scripts: notes whether the Fine-tune status ever said there was no run.
WATCH_NO_RUN = """window.sawNoRun = false;
new MutationObserver(() => {
  const status = document.getElementById("finetune-status");
  if (status && status.textContent.includes("No run yet")) window.sawNoRun = true;
}).observe(document, {subtree: true, childList: true, characterData: true});"""


def train_args(user, model, train_file, eval_percent=25, **hyper) -> dict:
    """/finetune_train's named values: who, which model, the data form and every hyperparameter."""
    return {"user_id": user, "base_model": model, "name": "", "task": TEXT_CLASSIFICATION, "train_file": train_file,
            "text_col": "text", "label_col": "label", "lm_format": "Plain text", "prompt_col": None,
            "eval_percent": eval_percent, "eval_file": None, "ood_file": None,
            **asdict(default_hyperparameters(TEXT_CLASSIFICATION)), **hyper}


def poll_until_done(client, user, timeout=90.0) -> tuple:
    """(status html, curves, results markdown, report, confusion, picker) once the run has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = client.predict(user, api_name="/finetune_poll")
        if ": finished" in out[0] or ": failed" in out[0]:
            return out
        time.sleep(0.5)
    raise AssertionError(f"training did not finish in {timeout} s: {out[0]}")


def test_client_uploads_a_csv_and_trains_one_epoch(client, tiny_classifier_dir, tmp_path):
    from gradio_client import handle_file

    csv = tmp_path / "mine.csv"
    pd.DataFrame({"text": ["nice", "lovely", "great", "poor", "dull", "bad"] * 3,
                  "label": ["good"] * 3 + ["bad"] * 3 + ["good"] * 3 + ["bad"] * 3 + ["good"] * 3 + ["bad"] * 3}
                 ).to_csv(csv, index=False)
    user = uuid.uuid4().hex
    preview = client.predict(handle_file(str(csv)), api_name="/finetune_preview")
    assert preview[1]["value"] == "text" and preview[2]["value"] == "label"
    returned_user, message = client.predict(**train_args(user, str(tiny_classifier_dir), handle_file(str(csv)),
                                                        epochs=1, batch_size=8, learning_rate=1e-3),
                                            api_name="/finetune_train")
    assert returned_user == user and message.startswith("Started"), message
    out = poll_until_done(client, user)
    assert ": finished" in out[0], out[0]
    assert "accuracy" in out[2] and "Trainable parameters" in out[2]
    # one model: its size and speed in a line, no one-row table, no ratio of a row to itself
    assert "Size and speed:" in out[2] and "Speed ratio" not in out[2] and "| model |" not in out[2]
    report = out[3]["value"]
    assert report["headers"][:2] == ["label", "precision"] and [row[0] for row in report["data"]] == ["bad", "good"]
    zipped = client.predict(user, api_name="/finetune_zip")
    assert str(zipped).endswith(".zip")


def test_client_distils_the_classifier_and_reads_the_teacher_student_table(client, tiny_classifier_dir, tmp_path):
    from gradio_client import handle_file

    csv = tmp_path / "reviews.csv"
    pd.DataFrame({"text": ["he loved it", "great fun", "she hated it", "dull plot"] * 4,
                  "label": ["1", "1", "0", "0"] * 4}).to_csv(csv, index=False)  # ids, read as the teacher's labels
    user = uuid.uuid4().hex
    _, message = client.predict(**train_args(user, str(tiny_classifier_dir), handle_file(str(csv)), epochs=1,
                                             batch_size=8, distil=True, student_layers=1, augment=True),
                                api_name="/finetune_train")
    assert message.startswith("Started"), message
    status, curves, results, *_ = poll_until_done(client, user)
    assert ": finished" in status, status
    assert "| teacher |" in results and "| student |" in results and "Speed ratio" in results
    assert "1 of the teacher's 2 layers" in results and "swapped copies" in results
    assert "KL to teacher" in str(curves)  # both loss terms are drawn


def test_client_second_run_waits_for_the_first_and_stop_ends_it(client, tiny_classifier_dir, tmp_path):
    from gradio_client import handle_file

    csv = tmp_path / "long.csv"
    pd.DataFrame({"text": ["nice", "poor"] * 8, "label": ["good", "bad"] * 8}).to_csv(csv, index=False)
    user = uuid.uuid4().hex
    # Far more steps than the test waits for, so the run is certainly still going when the second request comes.
    _, message = client.predict(**train_args(user, str(tiny_classifier_dir), handle_file(str(csv)), epochs=1000,
                                            batch_size=2), api_name="/finetune_train")
    assert message.startswith("Started"), message
    _, busy = client.predict(**train_args(user, str(tiny_classifier_dir), handle_file(str(csv))), api_name="/finetune_train")
    assert "already have a run" in busy
    assert client.predict(user, api_name="/finetune_stop").startswith("Stopping")
    out = poll_until_done(client, user)
    assert ": finished" in out[0] and "stopped by you" in out[2], out[2]


def training_processes() -> list:
    import psutil

    return [p for p in psutil.Process().children(recursive=True) if "spawn_main" in " ".join(p.cmdline())]


def test_killing_the_training_process_fails_that_run_and_the_app_keeps_serving(client, tiny_classifier_dir, tmp_path):
    from gradio_client import handle_file

    csv = tmp_path / "long.csv"
    pd.DataFrame({"text": ["nice", "poor"] * 8, "label": ["good", "bad"] * 8}).to_csv(csv, index=False)
    user = uuid.uuid4().hex
    before = {p.pid for p in training_processes()}
    _, message = client.predict(**train_args(user, str(tiny_classifier_dir), handle_file(str(csv)), epochs=1000,
                                             batch_size=2), api_name="/finetune_train")
    assert message.startswith("Started"), message
    deadline = time.monotonic() + 60
    while not (new := [p for p in training_processes() if p.pid not in before]) and time.monotonic() < deadline:
        time.sleep(0.1)
    new[0].kill()  # what the kernel's out-of-memory killer would do
    out = poll_until_done(client, user)
    assert ": failed" in out[0] and "ended unexpectedly" in out[0] and "SIGKILL" in out[0]
    # the app still answers, and this user can train again
    _, again = client.predict(**train_args(user, str(tiny_classifier_dir), handle_file(str(csv)), epochs=1),
                              api_name="/finetune_train")
    assert again.startswith("Started") and ": finished" in poll_until_done(client, user)[0]


def test_client_out_of_range_numbers_get_a_message_naming_the_setting(client, tmp_path):
    from gradio_client import handle_file

    csv = tmp_path / "ok.csv"
    pd.DataFrame({"text": ["nice", "poor"] * 4, "label": ["good", "bad"] * 4}).to_csv(csv, index=False)
    for change, named in ((dict(batch_size=0), "Batch size"), (dict(seed=2**70), "Seed"),
                          (dict(learning_rate=5), "Learning rate")):
        _, message = client.predict(**train_args(uuid.uuid4().hex, "x", handle_file(str(csv)), **change),
                                    api_name="/finetune_train")
        assert message.startswith("⚠️") and named in message, message


def test_client_bad_file_gets_a_message(client, tmp_path):
    from gradio_client import handle_file

    one_class = tmp_path / "one.csv"
    one_class.write_text("text,label\na,x\nb,x\nc,x\n")
    checked = client.predict(seed=42, task=TEXT_CLASSIFICATION, train_file=handle_file(str(one_class)), text_col="text",
                             label_col="label", lm_format="Plain text", prompt_col=None, eval_percent=10,
                             eval_file=None, ood_file=None, api_name="/finetune_check")
    assert "⚠️" in checked and "at least two" in checked
    comments = tmp_path / "comments.csv"
    comments.write_text("id,comment_body\n1,great\n2,awful\n3,fine\n")
    shown = client.predict(handle_file(str(comments)), TEXT_CLASSIFICATION, api_name="/finetune_preview")
    assert shown[1]["value"] == "comment_body" and shown[2]["value"] is None  # never the id column
    assert "No label column found" in shown[5] and "id, comment_body" in shown[5]
    checked = client.predict(seed=42, task=TEXT_CLASSIFICATION, train_file=handle_file(str(comments)),
                             text_col="comment_body", label_col=None, lm_format="Plain text", prompt_col=None,
                             eval_percent=10, eval_file=None, ood_file=None, max_examples=0, api_name="/finetune_check")
    assert "no column 'label' (the label)" in checked and "'id', 'comment_body'" in checked, checked
    _, message = client.predict(**train_args(uuid.uuid4().hex, "no/such-model-offline", handle_file(str(one_class))),
                                api_name="/finetune_train")
    assert message.startswith("⚠️") and "at least two" in message


def _example_loaded(page, model_folder):
    """The Fine-tune tab on `model_folder` with the example reviews loaded and previewed."""
    tab = open_tab(page, "finetune")
    tab.get_by_label("Base model").fill(str(model_folder))
    tab.get_by_label("Base model").press("Enter")
    tab.get_by_role("button", name="Load the example data for this task").click()
    tab.locator(".cell-wrap:visible", has_text="positive").first.wait_for(timeout=30_000)  # the label column of the preview
    return tab


@pytest.mark.browser
def test_browser_trains_the_example(page, screenshot_dir, tiny_classifier_dir):
    tab = _example_loaded(page, tiny_classifier_dir)
    open_accordion(tab, "Hyperparameters")
    tab.get_by_label("Epochs").fill("200")  # long enough to be seen running, and reloaded; Stop ends it
    tab.get_by_label("Learning rate").fill("0.001")
    tab.get_by_role("button", name="Train", exact=True).click()
    tab.get_by_text("step ", exact=False).first.wait_for(timeout=60_000)
    tab.locator(".js-plotly-plot .scatterlayer .trace").first.wait_for(timeout=60_000)  # loss points are drawn
    page.wait_for_timeout(1500)
    page.screenshot(path=str(screenshot_dir / "finetune_during.png"), full_page=True)
    assert tab.get_by_text("ETA", exact=False).count() >= 1
    page.add_init_script(WATCH_NO_RUN)
    page.reload()  # the run lives on the server, found again through the id the browser keeps
    tab = open_tab(page, "finetune")
    tab.get_by_text("Text classification on", exact=False).first.wait_for(timeout=30_000)
    tab.locator(".js-plotly-plot .scatterlayer .trace").first.wait_for(timeout=30_000)  # the curves so far, too
    page.screenshot(path=str(screenshot_dir / "finetune_reloaded.png"), full_page=True)
    assert page.evaluate("window.sawNoRun") is False  # the running job at once, never "No run yet" first
    tab.get_by_role("button", name="Stop", exact=True).click()
    tab.get_by_text("Results:", exact=False).wait_for(timeout=120_000)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(screenshot_dir / "finetune_after.png"), full_page=True)
    assert tab.get_by_text("macro F1", exact=False).count() >= 1
    assert tab.get_by_text("stopped by you", exact=False).count() >= 1


@pytest.mark.browser
def test_browser_distils_with_augmentation_and_shows_both_loss_terms(page, screenshot_dir, tiny_classifier_dir):
    tab = _example_loaded(page, tiny_classifier_dir)
    open_accordion(tab, "Distil a smaller model")
    tab.get_by_label("Distil into a smaller student").check()
    tab.get_by_label("Teacher model").first.wait_for(timeout=10_000)  # the picker now names the teacher
    tab.get_by_label("Counterfactual augmentation").check()
    tab.get_by_role("button", name="Train", exact=True).click()
    tab.get_by_text("Results:", exact=False).wait_for(timeout=120_000)
    tab.locator(".js-plotly-plot .legend", has_text="KL to teacher").first.wait_for(timeout=30_000)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(screenshot_dir / "finetune_distil.png"), full_page=True)
    assert tab.get_by_role("cell", name="teacher", exact=True).count() >= 1
    assert tab.get_by_role("cell", name="student", exact=True).count() >= 1
