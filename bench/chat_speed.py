"""Chat speed for one user, as the app serves the default model, next to its anchors, all in one run.

    PYTHONPATH=. .venv/bin/python bench/chat_speed.py [--rounds 3] [--tokens 128]

Rows, each greedy and at the Chat tab's default sampling (temperature 0.7, top-k 50, top-p 0.95, repetition
penalty 1.1, seed 1), on the same chat prompt (about 50 tokens):
- the app's engine, on the runtime the app chose for this CPU;
- onnxruntime-genai's own `Generator` on the same ONNX export (greedy, and its own sampler at the same settings);
- the app's engine on PyTorch fp32;
- transformers `pipeline("text-generation")` at fp32.
Then the decode step at a 100-token and a 1,500-token context (one request and 16), and the generation check on
the held-out "report" questions of assets/generation_check.json: how many of fp32's right answers what serves keeps
(and the rejected int8 export, for contrast). Rounds are interleaved and each row keeps its best round (noise only
ever makes a round slower). Threads: 2, or $LLMPG_THREADS. Targets (issue 18): default sampling >= 0.95x greedy;
app engine >= 1.0x the Generator at greedy.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from core.chat.backends import OnnxBackend  # noqa: E402
from core.chat.faithful import GenerationCheck, check_questions, greedy_replies  # noqa: E402
from core.chat.prompting import build_prompt  # noqa: E402
from core.chat.sampling import SamplingSettings  # noqa: E402
from core.chat.serving import ChatRuntimes, eos_ids, torch_engine  # noqa: E402
from core.models import onnx_runtime  # noqa: E402
from core.models.device import configure_threads  # noqa: E402
from core.models.manager import ModelManager  # noqa: E402
from core.models.registry import CAUSAL_LM, DEFAULT_CHAT_MODEL  # noqa: E402

PROMPT_TOKENS = 50
QUESTION = ("Write a long, detailed story about a young dragon who learns to read in a village library, "
            "with names, places and dialogue, and many more details about everything")
GREEDY = SamplingSettings(temperature=0, repetition_penalty=1.0)
DEFAULT = SamplingSettings(seed=1)  # the Chat tab's defaults


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


def run_engine(engine, ids: list[int], settings: SamplingSettings, tokens: int) -> Run:
    """What the Chat tab does per message, from submission to the last token."""
    reply = engine.submit(ids, replace(settings, max_new_tokens=tokens)).result()
    return Run(reply.stats.tokens, reply.stats.first_token_s, reply.stats.decode_tokens_per_s or 0.0)


def run_generator(model, ids: list[int], settings: SamplingSettings, tokens: int) -> Run:
    """onnxruntime-genai's own loop on the same export, its own sampler at the same settings."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    options = dict(max_length=len(ids) + tokens, do_sample=not settings.greedy, batch_size=1)
    if not settings.greedy:
        options |= dict(temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                        repetition_penalty=settings.repetition_penalty, random_seed=settings.seed)
    params.set_search_options(**options)
    start = time.perf_counter()
    generator = og.Generator(model, params)
    generator.append_tokens(np.array([ids], dtype=np.int32))
    stamps = []
    while not generator.is_done() and len(stamps) < tokens:
        generator.generate_next_token()
        stamps.append(time.perf_counter())
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return Run(len(stamps), stamps[0] - start, rate)


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


def run_pipeline(pipe, question: str, settings: SamplingSettings, tokens: int) -> Run:
    """The naive way: one pipeline call on the chat messages (it applies the chat template itself)."""
    import torch

    streamer = TimingStreamer()
    kwargs = dict(do_sample=False) if settings.greedy else dict(
        do_sample=True, temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
        repetition_penalty=settings.repetition_penalty)
    torch.manual_seed(settings.seed or 0)
    start = time.perf_counter()
    pipe([{"role": "user", "content": question}], max_new_tokens=tokens, streamer=streamer, **kwargs)
    stamps = streamer.stamps
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return Run(len(stamps), stamps[0] - start, rate)


def step_ms(backend, context: int, rows: int, steps: int = 16) -> float:
    """Median decode step (forward pass) at `context` tokens of history, with `rows` requests in the store."""
    store = backend.new_store()
    for row in range(rows):
        _, prefilled = backend.read_more(None, [(row * 7 + i) % 5000 + 10 for i in range(context)], context)
        store.add(row, prefilled)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        store.decode([11] * rows)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000


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
    ids = build_prompt(served.tokenizer, [], question, use_template=True).input_ids
    import onnxruntime_genai as og
    from transformers import pipeline

    folder = Path(manager.resolve(DEFAULT_CHAT_MODEL).path)
    precision = served.backend.precision if served.backend.runtime == onnx_runtime.RUNTIME else "fp32"
    export = onnx_runtime.export(folder, precision)
    generator_model = og.Model(str(export))
    pipe = pipeline("text-generation", model=fp32.path, dtype="float32", device="cpu")
    engine_fp32 = torch_engine(fp32.model, fp32.tokenizer)
    sides = {}
    for label, settings in (("greedy", GREEDY), ("default sampling", DEFAULT)):
        sides[f"app engine ({served.backend.describe()}), {label}"] = (
            lambda s=settings: run_engine(served.engine, ids, s, args.tokens))
        sides[f"onnxruntime-genai Generator ({precision} export), {label}"] = (
            lambda s=settings: run_generator(generator_model, ids, s, args.tokens))
        sides[f"app engine on PyTorch fp32, {label}"] = lambda s=settings: run_engine(engine_fp32, ids, s, args.tokens)
        sides[f"pipeline fp32, {label}"] = lambda s=settings: run_pipeline(pipe, question, s, args.tokens)
    for run in sides.values():
        run()  # warm-up: first calls pay one-off costs
    runs: dict[str, list[Run]] = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, run in sides.items():
            runs[name].append(run())
    print(f"threads {threads} | {DEFAULT_CHAT_MODEL} | prompt {len(ids)} tokens | up to {args.tokens} new | best of "
          f"{args.rounds} interleaved rounds")
    results = {name: best(r) for name, r in runs.items()}
    for name, r in results.items():
        print(f"{name:68s} {r.decode_tok_s:7.1f} tok/s | first token {r.first_token_s:.3f} s | {r.tokens} tokens")
    app = [r for n, r in results.items() if n.startswith("app engine (")]
    generator = [r for n, r in results.items() if "Generator" in n]
    print(f"default sampling / greedy (app engine): {app[1].decode_tok_s / app[0].decode_tok_s:.2f} (target >= 0.95)")
    print(f"app engine / Generator, greedy: {app[0].decode_tok_s / generator[0].decode_tok_s:.2f} (target >= 1.0); "
          f"default sampling: {app[1].decode_tok_s / generator[1].decode_tok_s:.2f}")
    for context in (100, 1500):
        print(f"decode step at a {context:,}-token context: {step_ms(served.backend, context, 1):6.1f} ms (1 request) | "
              f"{step_ms(served.backend, context, 16):6.1f} ms (16 requests)")
    print_generation_check(served, fp32, folder)
    return 0


def print_generation_check(served, fp32, folder: Path) -> None:
    """The held-out questions: fp32's right answers, and how many of them what serves (and int8) keep."""
    questions = check_questions("report")
    tokenizer, eos = fp32.tokenizer, eos_ids(fp32.model, fp32.tokenizer)
    from core.chat.backends import TorchBackend

    reference = greedy_replies(TorchBackend(fp32.model, "fp32", "cpu", served.context, 32), tokenizer, eos, True,
                               questions)
    fp32_right = sum(q.answered(r) for q, r in zip([q for q in questions for _ in (0, 1)], reference))
    print(f"generation check, held-out questions ({len(questions)} x with and without the system prompt): fp32 right "
          f"{fp32_right} of {2 * len(questions)}")
    rows = {f"what serves ({served.backend.describe()})": served.backend,
            "onnx int8 export": OnnxBackend(onnx_runtime.OnnxModel(onnx_runtime.export(folder, "int8")), "int8", 32)}
    for label, backend in rows.items():
        check = GenerationCheck.of(questions, reference, greedy_replies(backend, tokenizer, eos, True, questions))
        print(f"  {label:44s} kept {check.kept} of fp32's {check.fp32_right} right answers | {check.identical} of "
              f"{check.asked} replies word for word | {'passes' if check.passed else 'fails'}")


if __name__ == "__main__":
    sys.exit(main())
