"""Many users chatting at once through the app: continuous batching against one-at-a-time, in one run.

Launches the app twice as a user would (`app.py --offline --tabs chat`): once as configured (batches of up to 16
replies) and once with `--chat-batch 1` (replies one after another). For 1, 4, 8 and 16 concurrent
`gradio_client` users, each with its own question, greedy, 64 new tokens: aggregate tokens/s, p50/p95 time to
first token and to the whole reply (measured by the client), and the app's peak memory.

    PYTHONPATH=. .venv/bin/python bench/chat_load.py [--users 1,4,8,16] [--tokens 64]

Targets (issue 10): 16 users >= 4x the one-at-a-time aggregate, p95 first token <= 2 s.
"""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load_tools import QUESTIONS, Reply, launched_app, load_args, run_users, summary  # noqa: E402


def has_text(chatbot: list[dict]) -> bool:
    """The reply bubble holds generated text (not the waiting notice or the empty placeholder)."""
    if not chatbot or chatbot[-1]["role"] != "assistant":
        return False
    content = chatbot[-1]["content"]
    text = content if isinstance(content, str) else "".join(part.get("text", "") for part in content)
    return bool(text.strip()) and not text.startswith(("⏳", "…"))


def chat_user(url: str, tokens: int):
    from gradio_client import Client

    def one(i: int) -> Reply:
        client = Client(url, verbose=False)
        start = time.perf_counter()
        job = client.submit(message=QUESTIONS[i % len(QUESTIONS)], temperature=0, repetition_penalty=1.0,
                            max_new_tokens=tokens, api_name="/chat_send")
        first = None
        while not job.done():
            outputs = job.outputs()
            if first is None and outputs and has_text(outputs[-1][0]):
                first = time.perf_counter() - start
            time.sleep(0.02)
        status = job.result()[2]
        seconds = time.perf_counter() - start
        count = re.search(r"(\d+) tokens?", status)
        return Reply(int(count.group(1)) if count else 0, first or seconds, seconds)

    return one


def measure(url: str, users: list[int], tokens: int, label: str) -> dict[int, float]:
    one = chat_user(url, tokens)
    one(0)  # warm-up: the model is loaded (and on first use exported) before timing
    rates = {}
    for n in users:
        replies, wall = run_users(n, one)
        rates[n], line = summary(label, replies, wall)
        print(line, flush=True)
    return rates


def main() -> int:
    users, tokens = load_args(__doc__)
    results = {}
    for label, flags in (("batched (up to 16 at once)", ()), ("one at a time (--chat-batch 1)", ("--chat-batch", "1"))):
        with launched_app("--tabs", "chat", *flags) as (url, memory):
            results[label] = measure(url, users, tokens, label)
            print(f"{label}: app peak RSS {memory.stop():.2f} GiB", flush=True)
    batched, sequential = results.values()
    for n in users:
        print(f"{n:3d} users: batched {batched[n]:7.1f} tok/s | one at a time {sequential[n]:7.1f} tok/s | "
              f"ratio {batched[n] / sequential[n]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
