"""Chat speed: decode tokens/s and time to first token of the default chat model as the app runs it,
next to a naive baseline (transformers pipeline("text-generation") at fp32, default settings), in one run.

    PYTHONPATH=. .venv/bin/python bench/chat_speed.py [--rounds 3] [--tokens 64]

Both sides answer the same chat prompt (about 50 tokens), greedily (the model's generation config
has no sampling, so that is the pipeline's default too). Each side runs `--rounds` times, interleaved,
and the best round counts: the cores are shared, and noise only ever makes a round slower.
Threads: 2, or $LLMPG_THREADS.
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

import torch  # noqa: E402

from core.chat.generation import SamplingSettings, stream_reply  # noqa: E402
from core.chat.prompting import DEFAULT_SYSTEM_PROMPT, build_prompt, context_length  # noqa: E402
from core.models.device import configure_threads  # noqa: E402
from core.models.manager import ModelLoadError, ModelManager  # noqa: E402
from core.models.registry import DEFAULT_CHAT_MODEL  # noqa: E402

PROMPT_TOKENS = 50
QUESTION = ("Write a long, detailed story about a young dragon who learns to read in a village library, "
            "with names, places and dialogue, and many more details about everything")


@dataclass
class Run:
    tokens: int
    first_token_s: float
    decode_tok_s: float


def rate(stamps: list[float]) -> float:
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0


def question_for(tokenizer, want: int) -> str:
    """The longest prefix of QUESTION whose chat prompt stays within `want` tokens."""
    words = QUESTION.split()
    for n in range(len(words), 0, -1):
        text = " ".join(words[:n])
        if len(build_prompt(tokenizer, [], text, use_template=True).input_ids) <= want:
            return text
    return words[0]


def run_engine(loaded, question: str, tokens: int) -> Run:
    """What the chat tab does per message: build the prompt, stream the reply."""
    start = time.perf_counter()
    prompt = build_prompt(loaded.tokenizer, [], question, use_template=loaded.is_chat,
                          context=context_length(loaded.model, loaded.tokenizer), max_new_tokens=tokens)
    stamps = [time.perf_counter() for _ in stream_reply(loaded.model, loaded.tokenizer, prompt.input_ids,
                                                        SamplingSettings(temperature=0, repetition_penalty=1.0,
                                                                         max_new_tokens=tokens), record_steps=True)]
    stamps = stamps[:-1] or stamps  # the last chunk repeats the final token with the stats
    return Run(len(stamps), stamps[0] - start, rate(stamps))


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


def run_baseline(pipe, question: str, tokens: int) -> Run:
    streamer = TimingStreamer()
    messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": question}]
    start = time.perf_counter()
    pipe(messages, max_new_tokens=tokens, streamer=streamer)
    return Run(len(streamer.stamps), streamer.stamps[0] - start, rate(streamer.stamps))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    threads = configure_threads(int(os.environ.get("LLMPG_THREADS", "2")))
    manager = ModelManager(offline=True)
    try:
        loaded = manager.load(DEFAULT_CHAT_MODEL)
    except ModelLoadError as err:
        print(f"skipped: the default chat model is not available offline ({err})")
        return 0
    from transformers import pipeline

    pipe = pipeline("text-generation", model=loaded.path, dtype=torch.float32)
    question = question_for(loaded.tokenizer, PROMPT_TOKENS)
    prompt_len = len(build_prompt(loaded.tokenizer, [], question, use_template=True).input_ids)
    print(f"{DEFAULT_CHAT_MODEL}: engine {loaded.precision} (app's auto choice), baseline pipeline fp32; "
          f"{threads} threads; prompt {prompt_len} tokens; up to {args.tokens} new tokens, greedy")
    run_engine(loaded, question, 4), run_baseline(pipe, question, 4)  # warm-up: first calls pay one-off costs
    engine, baseline = [], []
    for n in range(args.rounds):
        engine.append(run_engine(loaded, question, args.tokens))
        baseline.append(run_baseline(pipe, question, args.tokens))
        print(f"  round {n + 1}: engine {engine[-1].decode_tok_s:5.1f} tok/s, TTFT {engine[-1].first_token_s:.3f} s "
              f"({engine[-1].tokens} tok) | baseline {baseline[-1].decode_tok_s:5.1f} tok/s, "
              f"TTFT {baseline[-1].first_token_s:.3f} s ({baseline[-1].tokens} tok)")
    best_e, best_b = max(r.decode_tok_s for r in engine), max(r.decode_tok_s for r in baseline)
    ttft_e, ttft_b = min(r.first_token_s for r in engine), min(r.first_token_s for r in baseline)
    print(f"engine {best_e:.1f} tok/s | baseline {best_b:.1f} tok/s | ratio {best_e / best_b:.2f}")
    print(f"TTFT ({prompt_len}-token prompt): engine {ttft_e:.3f} s | baseline {ttft_b:.3f} s "
          f"| target < 0.5 s: {'met' if ttft_e < 0.5 else 'missed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
