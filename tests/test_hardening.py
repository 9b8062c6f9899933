"""What a public deployment needs: JSON caches that survive concurrent writers, a fair visible queue for heavy
work, operator-only switches, escaped HTML, clear messages for bad numbers, and bugs that do not leak out."""
from __future__ import annotations

import json
import threading
import time

import gradio as gr
import pytest

from core.common.errors import BusyError, InputError, StoppedError, check_number
from core.common.json_cache import read_json, update_json
from core.common.stopping import RunControl
from core.common.work_queue import WorkQueue
from core.finetune.jobs import FAILED, Job
from core.finetune.progress import TrainingProgress
from core.models.manager import ModelLoadError, ModelManager
from ui.components import guard
from ui.finetune_tab import progress_html


def test_concurrent_updates_of_one_json_cache_lose_nothing(tmp_path):
    path = tmp_path / "memo.json"

    def add(n: int) -> None:
        for i in range(20):
            update_json(path, lambda known, key=f"{n}-{i}": {**known, key: i})

    writers = [threading.Thread(target=add, args=(n,)) for n in range(6)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert len(json.loads(path.read_text())) == 120
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".memo.json.")]  # no temporary files left
    path.write_text("{broken")
    assert read_json(path, {}) == {}


def test_heavy_runs_wait_in_line_see_their_place_and_can_stop_while_waiting():
    queue = WorkQueue(slots=1, time_budget_s=60, typical_run_s=30)
    alice, bob, carol = RunControl(), RunControl(), RunControl()
    started, release, seen = threading.Event(), threading.Event(), []

    def alice_run():
        with queue.run(alice, "alice's sweep"):
            started.set()
            release.wait(10)

    def bob_run():
        try:
            with queue.run(bob, "bob's sweep", lambda _f, text: seen.append(text)):
                pass
        except StoppedError as err:
            seen.append(f"stopped: {err}")

    threading.Thread(target=alice_run).start()
    assert started.wait(5)
    with pytest.raises(BusyError, match="already have a run"):
        with queue.run(alice, "a second sweep"):
            pass
    waiting = threading.Thread(target=bob_run)
    waiting.start()
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "1st in line" in seen[0] and "about 30 s" in seen[0]
    assert bob.stop()  # Stop while waiting: the run never starts
    waiting.join(5)
    assert seen[-1].startswith("stopped: Cancelled while waiting")
    release.set()
    with queue.run(carol, "carol's sweep") as flag:  # the slot is free again
        assert not flag.stopped


def test_the_time_budget_stops_a_run_with_its_reason():
    queue = WorkQueue(slots=1, time_budget_s=0.2)
    with queue.run(RunControl(), "a long probe") as flag:
        time.sleep(0.5)
    assert flag.stopped and "time budget" in flag.reason


def test_numbers_out_of_range_name_the_setting():
    assert check_number("Seed", "7", 0, 10, integer=True) == 7
    for value, message in ((2**70, "Seed must be between 0 and 10"), ("abc", "Seed must be a number"),
                           (float("inf"), "finite"), (2.5, "whole number")):
        with pytest.raises(InputError, match=message):
            check_number("Seed", value, 0, 10, integer=True)


def test_remote_code_is_the_operators_choice(tiny_lm_dirs):
    with pytest.raises(ModelLoadError, match="turned off on this server"):
        ModelManager(offline=True).load(str(tiny_lm_dirs["gpt2"]), trust_remote_code=True)
    assert ModelManager(offline=True, allow_remote_code=True).load(str(tiny_lm_dirs["gpt2"]), precision="fp32",
                                                                   trust_remote_code=True).model is not None


def test_job_text_reaches_the_page_escaped():
    job = Job(RunControl(), "<img src=x onerror=alert(1)> on <b>model</b>", TrainingProgress(), state=FAILED,
              error="<script>alert('x')</script>")
    page = progress_html(job, job.progress.snapshot())
    assert "<script>" not in page and "<img" not in page and "&lt;script&gt;" in page


def test_a_bug_becomes_a_short_message_and_a_logged_traceback(caplog):
    @guard
    def handler(text):
        return {}[text]

    @guard
    def streaming(text):
        yield "partial"
        raise InputError(f"bad {text}")

    with pytest.raises(gr.Error, match="Something went wrong on the server \\(KeyError\\)"):
        handler("missing")
    assert "Traceback" in caplog.text or caplog.records[-1].exc_info
    with pytest.raises(gr.Error, match="bad input"):
        list(streaming("input"))


def test_api_seed_and_remote_code_get_clear_messages(client, tiny_lm_dirs):
    client.predict(model_id=str(tiny_lm_dirs["llama"]), allow_remote_code=False, api_name="/chat_load_model")
    status = client.predict(message="Hi", seed=2**70, max_new_tokens=2, api_name="/chat_send")[2]
    assert "Seed must be between -1 and" in status
    info, _picker = client.predict(model_id=str(tiny_lm_dirs["gpt2"]), allow_remote_code=True,
                                   api_name="/chat_load_model")
    assert "turned off on this server" in info


def test_classroom_mode_hides_heavy_tabs_and_caps_replies(monkeypatch):
    import app

    monkeypatch.delenv("LLMPG_CLASSROOM", raising=False)
    args = app.parse_args(["--classroom"])
    settings = app.settings_from(args)
    assert settings.classroom and settings.max_new_tokens == 256 and settings.run_seconds == 300
    assert app.chosen_tabs(args, settings.classroom) == ("chat", "classify", "evaluate", "explain", "bias")
    monkeypatch.setenv("LLMPG_CLASSROOM", "1")  # the same on a Space, through its variables
    assert app.settings_from(app.parse_args([])).classroom
    monkeypatch.setenv("LLMPG_CLASSROOM", "0")
    plain = app.settings_from(app.parse_args(["--runtime", "torch", "--chat-batch", "4"]))
    assert not plain.classroom and plain.chat_runtime == "torch" and plain.chat_batch == 4 and not plain.allow_remote_code
