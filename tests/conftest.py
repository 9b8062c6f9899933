"""Shared fixtures: tiny local models, an offline app launched once, and a headless Chromium page."""
from __future__ import annotations

import os
import socket
from pathlib import Path

# No hub access here or in CI: fail fast instead of retrying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest

from tests.tiny_models import build_bert, build_causal_lm

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run faster on one thread than on two contending ones (the app runs in this process)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_lm_dirs(tmp_path_factory) -> dict[str, Path]:
    """Folders with tiny random gpt2, llama, phi and phi3 causal LMs (llama and phi3 have chat templates)."""
    root = tmp_path_factory.mktemp("tiny_lms")
    return {f: build_causal_lm(root / f, f) for f in ("gpt2", "llama", "phi", "phi3")}


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory) -> Path:
    return build_bert(tmp_path_factory.mktemp("tiny_cls"), ["negative", "positive"])


@pytest.fixture(scope="session")
def tiny_ner_dir(tmp_path_factory) -> Path:
    return build_bert(tmp_path_factory.mktemp("tiny_ner"), ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"],
                      token_level=True)


@pytest.fixture(scope="session")
def services(tmp_path_factory):
    from core.common.settings import Settings
    from core.models.manager import ModelManager
    from core.models.store import ModelStore
    from core.services import Services

    # Remote servers are an operator's switch; the tests use one (a second instance of this app on loopback).
    return Services(settings=Settings(allow_remote_servers=True), manager=ModelManager(offline=True),
                    store=ModelStore(tmp_path_factory.mktemp("store")))


@pytest.fixture(scope="session")
def default_models(services):
    """The app's start-up preparation (the SmolLM2 chat engine, then the default classifier), run once before the
    first test that uses a real model: built once per machine (cached under LLMPG_HOME), loaded once per session."""
    import torch

    from core.common.readiness import Readiness
    from core.models.device import configure_threads

    # At the app's thread count, whichever module first asks (some run on one thread): runtime choices are measured
    # and cached per thread count, and a first run on an empty cache must make them once.
    before = torch.get_num_threads()
    configure_threads()
    try:
        report = Readiness(services.startup_stages(("chat", "classify"))).run()
    finally:
        torch.set_num_threads(before)
    assert report.ready, report.as_dict()
    return report


@pytest.fixture(autouse=True)
def _real_models_prepared(request):
    if request.node.get_closest_marker("real_model"):
        request.getfixturevalue("default_models")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_url(services):
    """The whole app, offline, launched once for the gradio_client and browser tests."""
    yield from launched(services)


def launched(services, tabs: tuple[str, ...] = ()):
    """Launch the app (UI, /v1 API and /readiness; `tabs`, else all) on a free port, as app.py does; yields its URL,
    closes it after."""
    from api.openai_server import launch
    from ui.app import build_app, launch_options

    # LLMPG_TABS=chat,explain builds a subset (handy while one tab is being worked on); CI builds all.
    tabs = tabs or tuple(t for t in os.environ.get("LLMPG_TABS", "").split(",") if t)
    demo = build_app(services, tabs) if tabs else build_app(services)
    port = _free_port()
    launch(demo, services, block=False, server_name="127.0.0.1", server_port=port, quiet=True, **launch_options())
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="session")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-quic", "--no-first-run", "--disable-sync"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, app_url):
    """A fresh page (its own gradio session) on the launched app, 1400x1000."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.goto(app_url)
    pg.wait_for_selector("gradio-app", timeout=30_000)
    yield pg
    context.close()


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    folder = ARTIFACTS / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder

