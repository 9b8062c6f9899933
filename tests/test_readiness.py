"""Ready when opened: the app prepares its default models in the background from the moment it listens, shows one
"getting ready" notice with real progress until they are ready, reports the same through GET /readiness, and then
answers at once. Also: where the cache goes on a Hugging Face Space."""
from __future__ import annotations

import threading
import time

import httpx
import pytest
from gradio_client import Client

from core.common.readiness import Readiness, Stage, StageState
from core.common.settings import Settings
from core.models import paths
from core.models.manager import ModelManager
from core.services import Services
from tests.conftest import launched
from tests.test_chat_ui import reply_text
from ui.classify_tab import CLASSIFIER


def test_stages_run_in_order_and_a_failure_does_not_stop_the_next():
    ran = []

    def broken(_progress):
        raise OSError("disk full")

    readiness = Readiness([Stage("a", "A", ("chat",), lambda p: ran.append("a") or p(0.5, "half")),
                           Stage("b", "B", ("classify",), broken), Stage("c", "C", ("bias",), lambda p: ran.append("c"))])
    assert not readiness.report().ready and readiness.report().stages[0].state is StageState.WAITING
    report = readiness.run()
    assert ran == ["a", "c"] and [s.state for s in report.stages] == [StageState.READY, StageState.FAILED,
                                                                      StageState.READY]
    assert report.settled and not report.ready and "disk full" in report.stages[1].error
    assert Readiness().report().ready  # nothing to prepare: ready from the start


def test_on_a_space_the_cache_goes_to_persistent_storage(tmp_path, monkeypatch):
    storage = tmp_path / "data"
    storage.mkdir()
    monkeypatch.setattr(paths, "SPACE_STORAGE", storage)
    monkeypatch.delenv("LLMPG_HOME", raising=False)
    monkeypatch.setenv("SPACE_ID", "someone/playground")
    assert paths.cache_dir() == storage / "llm-playground"
    monkeypatch.setenv("LLMPG_HOME", str(tmp_path / "mine"))  # the operator's own choice wins
    assert paths.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("LLMPG_HOME")
    monkeypatch.delenv("SPACE_ID")  # not a Space: the user's cache, even where /data exists
    assert paths.cache_dir() == paths.Path.home() / ".cache" / "llm-playground"


@pytest.mark.browser
def test_an_app_on_an_empty_home_reports_getting_ready_then_answers(tmp_path, monkeypatch, tiny_lm_dirs,
                                                                    tiny_classifier_dir, browser, screenshot_dir):
    """The real start-up preparation on an empty LLMPG_HOME, with tiny local models as the defaults and PyTorch
    serving (the packaged SmolLM2's conversion, ONNX exports and the classifier's training take minutes: the
    `default_models` fixture runs those once per machine, and bench/startup.py times them). A first stage that
    waits for the test keeps the "not ready" moment long enough to be seen."""
    home = tmp_path / "home"
    monkeypatch.setenv("LLMPG_HOME", str(home))
    chat_model, classifier = str(tiny_lm_dirs["llama"]), str(tiny_classifier_dir)
    services = Services(settings=Settings(chat_runtime="torch"), manager=ModelManager(offline=True),
                        default_chat_model=chat_model, default_classifier=classifier)
    gate = threading.Event()
    services.readiness = Readiness([Stage("gate", "A stage the test releases", ("chat",), lambda _p: gate.wait(60)),
                                    *services.startup_stages(("chat", "classify"))])
    app = launched(services, ("chat", "classify"))
    url = next(app)
    try:
        first = httpx.get(url + "readiness").json()
        assert not first["ready"] and [s["name"] for s in first["stages"]] == ["gate", "chat", "classifier"]
        assert [s["state"] for s in first["stages"]][1:] == ["waiting", "waiting"]  # the gate: waiting or running
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        page.goto(url)
        notice = page.locator("#readiness")
        notice.get_by_text("Getting ready").wait_for(timeout=30_000)
        assert "Chat model" in notice.inner_text() and "Classify" in notice.inner_text()
        box = notice.bounding_box()
        assert box["y"] + box["height"] < 1000  # above the fold
        page.screenshot(path=str(screenshot_dir / "readiness_notice.png"))
        gate.set()
        deadline = time.monotonic() + 120
        report = first
        while not report["settled"] and time.monotonic() < deadline:
            time.sleep(0.2)
            report = httpx.get(url + "readiness").json()
        assert report["ready"], report
        assert (home / "torch_quality.json").exists()  # the chat stage measured, on the empty home
        notice.wait_for(state="hidden", timeout=10_000)  # the page's poll saw it, hid the notice
        page.context.close()
        assert services.chat.ready(chat_model) is not None  # served before anyone asked
        client = Client(url, verbose=False)
        chatbot, *_rest, info, _version = client.predict(message="Hello", temperature=0, max_new_tokens=4,
                                                         api_name="/chat_send")
        assert chatbot[-1]["role"] == "assistant" and "4 tokens" in reply_text(chatbot) and "✅" in info
        verdict, _chart = client.predict(CLASSIFIER, classifier, classifier, "a, b", "This text is about {}.",
                                         "What a lovely day", 0.7, "auto", api_name="/classify_text")
        assert verdict.startswith("## ")
    finally:
        gate.set()
        next(app, None)  # closes the app
