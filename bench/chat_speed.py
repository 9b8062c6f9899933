"""Chat speed for one user: the app's engine as it serves the default model, the same engine on PyTorch fp32, and a
naive baseline (transformers `pipeline("text-generation")` at fp32), side by side in one run.

    PYTHONPATH=. .venv/bin/python bench/chat_speed.py [--rounds 3] [--tokens 128]

All three answer the same chat prompt (about 50 tokens) greedily. Rounds are interleaved and each side keeps its
best round: the cores are shared, and noise only ever makes a round slower. The app's row also prints what the
runtime choice measured: next-token agreement with fp32 on the probe text and perplexity on
assets/eval_text.txt. Threads: 2, or $LLMPG_THREADS. Targets (issue 10): ratio >= 7 with agreement >= 0.90,
perplexity within 3 % of fp32, first token < 0.1 s.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from core.chat.prompting import build_prompt  # noqa: E402
from core.chat.sampling import SamplingSettings  # noqa: E402
from core.chat.serving import ChatRuntimes, torch_engine  # noqa: E402
from core.models.device import configure_threads  # noqa: E402
from core.models.manager import ModelManager  # noqa: E402
from core.models.registry import CAUSAL_LM, DEFAULT_CHAT_MODEL  # noqa: E402

PROMPT_TOKENS = 50
QUESTION = ("Write a long, detailed story about a young dragon who learns to read in a village library, "
            "with names, places and dialogue, and many more details about everything")


@dataclass
class Run:
    tokens: int
    first_token_s: float
    decode_tok_s: float


def question_for(tokenizer, want: int) -> str:
    """The longest prefix of QUESTION whose chat prompt stays within `want` tokens."""
    words = QUESTION.split()
    for n in range(len(words), 0, -1):
        text = " ".join(words[:n])
        if len(build_prompt(tokenizer, [], text, use_template=True).input_ids) <= want:
            return text
    return words[0]


def run_engine(engine, ids: list[int], tokens: int) -> Run:
    """What the Chat tab does per message, from submission to the last token."""
    reply = engine.submit(ids, SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=tokens)).result()
    return Run(reply.stats.tokens, reply.stats.first_token_s, reply.stats.decode_tokens_per_s or 0.0)


class TimingStreamer:
    """A `generate` streamer that only notes when each new token arrives (the first put is the prompt)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self._prompt_seen = False

    def put(self, _value) -> None:
        if self._prompt_seen:
            self.stamps.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        pass


def run_pipeline(pipe, question: str, tokens: int) -> Run:
    """The naive way: one pipeline call on the chat messages (it applies the chat template itself)."""
    streamer = TimingStreamer()
    start = time.perf_counter()
    pipe([{"role": "user", "content": question}], max_new_tokens=tokens, do_sample=False, streamer=streamer)
    stamps = streamer.stamps
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return Run(len(stamps), stamps[0] - start, rate)


def best(runs: list[Run]) -> Run:
    return max(runs, key=lambda r: r.decode_tok_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    threads = configure_threads()
    manager = ModelManager(offline=True)
    served = ChatRuntimes(manager).serve(DEFAULT_CHAT_MODEL, progress=lambda f, m: print(f"  [{f:4.0%}] {m}",
                                                                                         flush=True))
    fp32 = manager.load(DEFAULT_CHAT_MODEL, CAUSAL_LM, precision="fp32")
    question = question_for(served.tokenizer, PROMPT_TOKENS)
    prompt = build_prompt(served.tokenizer, [], question, use_template=True)
    from transformers import pipeline

    pipe = pipeline("text-generation", model=fp32.path, dtype="float32", device="cpu")
    sides = {f"app engine ({served.backend.describe()})": lambda: run_engine(served.engine, prompt.input_ids,
                                                                              args.tokens),
             "engine on PyTorch fp32": lambda: run_engine(torch_engine(fp32.model, fp32.tokenizer), prompt.input_ids,
                                                          args.tokens),
             "pipeline fp32": lambda: run_pipeline(pipe, question, args.tokens)}
    for run in sides.values():
        run()  # warm-up: first calls pay one-off costs
    runs: dict[str, list[Run]] = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, run in sides.items():
            runs[name].append(run())
    print(f"threads {threads} | {DEFAULT_CHAT_MODEL} | prompt {len(prompt.input_ids)} tokens | greedy, up to "
          f"{args.tokens} new | best of {args.rounds} interleaved rounds")
    results = {name: best(r) for name, r in runs.items()}
    for name, r in results.items():
        print(f"{name:52s} {r.decode_tok_s:7.1f} tok/s | first token {r.first_token_s:.3f} s | {r.tokens} tokens")
    app, engine_fp32, baseline = results.values()
    print(f"ratio {app.decode_tok_s / baseline.decode_tok_s:.2f} (app engine / pipeline fp32) | engine fp32 / "
          f"pipeline {engine_fp32.decode_tok_s / baseline.decode_tok_s:.2f}")
    if served.quality:
        q = served.quality
        print(f"quality of what serves: agreement {q.agreement:.3f} (target >= 0.90) | perplexity {q.perplexity:.2f} vs "
              f"fp32 {q.fp32_perplexity:.2f} ({q.perplexity / q.fp32_perplexity - 1:+.1%}, target within 3 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
