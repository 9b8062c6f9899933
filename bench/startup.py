"""From `make run` to ready: the app launched on an empty LLMPG_HOME (a fresh clone, or a Space without storage),
timed until it listens, until GET /readiness says ready (each stage's own time as the app reports it), and then
the first chat reply and the first classification through gradio_client.

    PYTHONPATH=. .venv/bin/python bench/startup.py [--home DIR] [-- app flags, e.g. --runtime torch]

Without --home it uses a new temporary folder (deleted after); with an existing --home, the warm start is timed.
The baseline is the same preparation without the start-up stages: what the first user to chat or classify used to
wait (the stage's time), against what they wait now once ready.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench.load_tools import launched_app  # noqa: E402
from core.models.registry import OFFLINE_CLASSIFIER, OFFLINE_ENCODER  # noqa: E402


def timed(call) -> tuple[float, object]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", help="LLMPG_HOME to start on (default: a new empty folder)")
    parser.add_argument("--timeout", type=float, default=1800)
    args, app_flags = parser.parse_known_args()
    with tempfile.TemporaryDirectory(prefix="llmpg-startup-") as scratch:
        os.environ["LLMPG_HOME"] = args.home or scratch
        from gradio_client import Client

        from ui.classify_tab import CLASSIFIER

        start = time.perf_counter()
        with launched_app(*[f for f in app_flags if f != "--"], timeout=args.timeout, poll_s=0.2) as (url, memory):
            listening = time.perf_counter() - start
            report = httpx.get(url + "readiness").json()
            while not report["settled"] and time.perf_counter() - start < args.timeout:
                time.sleep(0.5)
                report = httpx.get(url + "readiness").json()
            ready = time.perf_counter() - start
            client = Client(url, verbose=False)
            reply_s, _ = timed(lambda: client.predict(message="What is the capital of France?", temperature=0,
                                                      max_new_tokens=16, api_name="/chat_send"))
            classify_s, _ = timed(lambda: client.predict(CLASSIFIER, OFFLINE_CLASSIFIER, OFFLINE_ENCODER, "a, b",
                                                         "This text is about {}.", "A warm and funny film.", 0.7,
                                                         "auto", api_name="/classify_text"))
            peak_gb = memory.stop()
    stages = {s["name"]: s for s in report["stages"]}
    print(f"home {'given' if args.home else 'empty'} | {os.cpu_count()} cores | app flags {app_flags or 'none'}")
    for stage in report["stages"]:
        print(f"  stage {stage['name']}: {stage['state']} in {stage['seconds']:.1f} s"
              + (f" ({stage['error']})" if stage["error"] else ""))
    print(f"launch to listening {listening:.1f} s | launch to ready {ready:.1f} s | peak RSS {peak_gb:.2f} GB")
    chat_s, classifier_s = stages.get("chat", {}).get("seconds", 0), stages.get("classifier", {}).get("seconds", 0)
    print(f"first chat reply (16 tokens) after ready {reply_s:.1f} s | baseline, preparing on first use "
          f"{chat_s + reply_s:.1f} s")
    print(f"first classification after ready {classify_s:.1f} s | baseline, preparing on first use "
          f"{classifier_s + classify_s:.1f} s")
    return 0 if report["ready"] else 1


if __name__ == "__main__":
    sys.exit(main())
