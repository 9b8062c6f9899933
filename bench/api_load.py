"""The OpenAI-compatible API under load, next to the same load through the web UI's API (gradio_client), one run.

Launches the app once (`app.py --offline --tabs chat`, default model). For 1, 4, 8 and 16 concurrent users, each
asks its own question (greedy, 64 new tokens, streamed): first through the official `openai` package on /v1,
then through `gradio_client` on /chat_send. Prints aggregate tokens/s and p50/p95 first-token and reply seconds
for both; both go through the same engine and batching.

    PYTHONPATH=. .venv/bin/python bench/api_load.py [--users 1,4,8,16] [--tokens 64]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.chat_load import chat_user  # noqa: E402
from bench.load_tools import QUESTIONS, Reply, launched_app, load_args, run_users, summary  # noqa: E402

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def api_user(url: str, tokens: int):
    import openai

    def one(i: int) -> Reply:
        client = openai.OpenAI(base_url=url + "v1", api_key="unused", max_retries=30)
        start = time.perf_counter()
        first, count = None, 0
        stream = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=tokens, stream=True,
                                                logprobs=True, messages=[{"role": "user",
                                                                          "content": QUESTIONS[i % len(QUESTIONS)]}])
        for chunk in stream:
            choice = chunk.choices[0] if chunk.choices else None
            if choice and choice.delta.content and first is None:
                first = time.perf_counter() - start
            if choice and choice.logprobs and choice.logprobs.content:
                count += len(choice.logprobs.content)
        seconds = time.perf_counter() - start
        return Reply(count, first or seconds, seconds)

    return one


def main() -> int:
    users, tokens = load_args(__doc__)
    with launched_app("--tabs", "chat") as (url, memory):
        sides = {"openai client on /v1": api_user(url, tokens), "gradio_client on /chat_send": chat_user(url, tokens)}
        for one in sides.values():
            one(0)  # warm-up: the model is loaded (and on first use exported) before timing
        for n in users:
            for label, one in sides.items():
                replies, wall = run_users(n, one)
                print(summary(label, replies, wall)[1], flush=True)
        print(f"app peak RSS {memory.stop():.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
