"""A class chatting at once: the engine alone, through the page and through the API, batching on and off, in one run.

    PYTHONPATH=. .venv/bin/python bench/chat_load.py [--users 1,4,8,16,32] [--tokens 64]

Every user asks its own question with the Chat tab's default sampling (temperature 0.7, top-k 50, top-p 0.95,
repetition penalty 1.1) and its own seed, 64 new tokens. Rows, for each number of users at once:
- the engine alone, in this process (as the app serves the default model);
- through the page: the app launched as `make run` starts it (`app.py --offline --tabs chat`), with users speaking
  gradio's queue protocol exactly as the browser does;
- through the API: the same app, users streaming /v1/chat/completions.
Each once with batching (up to 16 replies decoded together, the default) and once with `--chat-batch 1`. The users
run in one separate, light process (bench/light_client.py: asyncio, no threads, no torch) so they do not take the
server's cores. Anchor: onnxruntime-genai's `Generator` with a static batch of 16 (left-padded) on the same export,
its own sampler at the same settings. One user's rows keep the best of 3 runs. Figures: aggregate tokens/s,
p50/p95 first token and reply (as each client saw them), the app's peak memory. Targets (issue 18): engine at 16 users >= 1.0x the Generator's batch of 16;
through the page at 16 users >= 4x one at a time; p95 first token <= 1.5 s at 16 users; one user through the page
>= 0.85x the engine alone.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from bench.load_tools import QUESTIONS, ROOT, Load, Reply, launched_app  # noqa: E402
from core.chat.prompting import build_prompt  # noqa: E402
from core.chat.sampling import SamplingSettings  # noqa: E402
from core.chat.serving import ChatRuntimes  # noqa: E402
from core.models import onnx_runtime  # noqa: E402
from core.models.device import configure_threads  # noqa: E402
from core.models.manager import ModelManager  # noqa: E402
from core.models.registry import DEFAULT_CHAT_MODEL  # noqa: E402

DEFAULT = SamplingSettings()  # the Chat tab's defaults
ANCHOR_BATCH = 16
ONE_USER_ROUNDS = 3  # one user's rows keep the best of 3 runs: noise on a shared machine only ever slows a run


def best_of(run, users: int) -> Load:
    """`run()` once, or for one user the fastest of ONE_USER_ROUNDS runs."""
    return max((run() for _ in range(ONE_USER_ROUNDS if users == 1 else 1)), key=lambda load: load.rate)


def engine_alone(engine, prompts: list[list[int]], tokens: int) -> Load:
    """Every user's request submitted at once to the engine, as the Chat tab and the API submit them."""
    start = time.perf_counter()
    handles = [engine.submit(ids, SamplingSettings(max_new_tokens=tokens, seed=i)) for i, ids in enumerate(prompts)]
    finals = [h.result() for h in handles]
    replies = [Reply(f.stats.tokens, f.stats.first_token_s, f.stats.seconds) for f in finals]
    return Load(replies, time.perf_counter() - start)


def generator_batch(folder: Path, prompts: list[list[int]], tokens: int, pad: int) -> Load:
    """onnxruntime-genai's Generator: one static, left-padded batch, its own sampler at the Chat tab's settings."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    width = max(len(p) for p in prompts)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=width + tokens, min_length=width + tokens, do_sample=True,
                              temperature=DEFAULT.temperature, top_k=DEFAULT.top_k, top_p=DEFAULT.top_p,
                              repetition_penalty=DEFAULT.repetition_penalty, random_seed=1, batch_size=len(prompts))
    start = time.perf_counter()
    generator = og.Generator(model, params)
    generator.append_tokens(np.array([[pad] * (width - len(p)) + p for p in prompts], dtype=np.int32))
    first, steps = None, 0
    while not generator.is_done() and steps < tokens:
        generator.generate_next_token()
        steps += 1
        first = first or time.perf_counter() - start
    seconds = time.perf_counter() - start
    return Load([Reply(steps, first, seconds) for _ in prompts], seconds)


def clients(url: str, users: int, via: str, tokens: int) -> Load:
    """The light client process: `users` at once through the page or the API."""
    out = subprocess.run([sys.executable, "-m", "bench.light_client", "--url", url, "--users", str(users),
                          "--via", via, "--tokens", str(tokens)], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    result = json.loads(out.stdout)
    return Load([Reply(**r) for r in result["replies"]], result["wall_s"])


def through_app(users: list[int], tokens: int, flags: tuple[str, ...], label: str) -> dict[tuple[str, int], Load]:
    rows = {}
    with launched_app("--tabs", "chat", *flags) as (url, memory):
        clients(url, 1, "page", tokens)  # warm-up: the model is loaded (and on first use measured) before timing
        for n in users:
            for via in ("page", "api"):
                rows[(via, n)] = best_of(lambda: clients(url, n, via, tokens), n)
                print(rows[(via, n)].line(f"through the {via} ({label})"), flush=True)
        print(f"app ({label}): peak RSS {memory.stop():.2f} GiB", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", default="1,4,8,16,32")
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    users, tokens = [int(n) for n in args.users.split(",")], args.tokens
    print(f"threads {configure_threads()} | {DEFAULT_CHAT_MODEL} | Chat tab default sampling | {tokens} new tokens",
          flush=True)
    manager = ModelManager(offline=True)
    batched = ChatRuntimes(manager).serve(DEFAULT_CHAT_MODEL)
    prompts = [build_prompt(batched.tokenizer, [], QUESTIONS[i % len(QUESTIONS)], use_template=True).input_ids
               for i in range(max(users + [ANCHOR_BATCH]))]
    single = ChatRuntimes(manager, max_batch=1).serve(DEFAULT_CHAT_MODEL)
    print(f"what serves: {batched.backend.describe()}", flush=True)
    alone = {}
    for n in users:
        for label, served in (("batched", batched), ("one at a time", single)):
            engine_alone(served.engine, prompts[:1], tokens)  # warm-up
            alone[(label, n)] = best_of(lambda: engine_alone(served.engine, prompts[:n], tokens), n)
            print(alone[(label, n)].line(f"engine alone ({label})"), flush=True)
    folder = Path(manager.resolve(DEFAULT_CHAT_MODEL).path)
    precision = batched.backend.precision if batched.backend.runtime == onnx_runtime.RUNTIME else "fp32"
    anchor = generator_batch(onnx_runtime.export(folder, precision), prompts[:ANCHOR_BATCH], tokens,
                             batched.tokenizer.pad_token_id or 0)
    print(anchor.line(f"onnxruntime-genai Generator, static batch {ANCHOR_BATCH}"), flush=True)
    batched.engine.close()
    single.engine.close()
    app = through_app(users, tokens, (), "batched")
    one = through_app(users, tokens, ("--chat-batch", "1"), "one at a time")
    print("summary:")
    if ANCHOR_BATCH in users:
        print(f"  engine alone at {ANCHOR_BATCH} users / Generator batch {ANCHOR_BATCH}: "
              f"{alone[('batched', ANCHOR_BATCH)].rate / anchor.rate:.2f} (target >= 1.0)")
        for via in ("page", "api"):
            print(f"  through the {via} at {ANCHOR_BATCH} users: batched / one at a time "
                  f"{app[(via, ANCHOR_BATCH)].rate / one[(via, ANCHOR_BATCH)].rate:.2f} (target >= 4) | p95 first "
                  f"token {app[(via, ANCHOR_BATCH)].p95_first():.2f} s (target <= 1.5)")
    if 1 in users:
        engine_speed = alone[("batched", 1)].replies[0].decode_tok_s
        for via in ("page", "api"):
            page_speed = app[(via, 1)].replies[0].decode_tok_s
            print(f"  one user through the {via}: {page_speed:.1f} tok/s | engine alone {engine_speed:.1f} tok/s | "
                  f"ratio {page_speed / engine_speed:.2f} (target >= 0.85)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
