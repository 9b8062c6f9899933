"""Two replies to one prompt, side by side: two models, or one model with two settings or precisions.

Both requests go to the engines at once (one model: the same engine, so they share decode steps), stream
together, and the first token where the two replies part ways is found, with what each side's model believed
at that step. A greedy comparison of a model with itself never diverges.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

from core.chat.prompting import DEFAULT_SYSTEM_PROMPT, build_prompt
from core.chat.sampling import SamplingSettings
from core.chat.serving import AUTO, ChatRuntimes, ServedModel
from core.chat.stream import STREAM_INTERVAL_S, ReplyChunk
from core.chat.token_view import TokenInfo, describe_steps
from core.common.errors import InputError
from core.common.stopping import StopFlag

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Side:
    model_id: str
    settings: SamplingSettings
    precision: str = AUTO  # the measured choice, or a precision by name (fp32 vs int8, say)


@dataclass(frozen=True)
class Divergence:
    step: int  # 0-based index of the first token that differs
    common: str  # the text both replies share before it
    a: TokenInfo  # side A's token there, with its model's top alternatives
    b: TokenInfo


@dataclass
class CompareUpdate:
    a: ReplyChunk
    b: ReplyChunk
    served: tuple[ServedModel, ServedModel]
    divergence: Divergence | None = None
    tokens: tuple[list[TokenInfo], list[TokenInfo]] = ([], [])
    done: bool = False


def first_divergence(a: list[TokenInfo], b: list[TokenInfo]) -> Divergence | None:
    """The first step where the chosen tokens differ (compared as text: the two sides may use other tokenizers)."""
    for step, (x, y) in enumerate(zip(a, b)):
        if x.text != y.text:
            return Divergence(step, "".join(t.text for t in a[:step]), x, y)
    return None


def compare(runtimes: ChatRuntimes, message: str, a: Side, b: Side, stop: StopFlag,
            system: str = DEFAULT_SYSTEM_PROMPT, progress: Progress | None = None) -> Iterator[CompareUpdate]:
    """Stream both replies; the last update has both token views and the divergence, if any."""
    if not message.strip():
        raise InputError("Type a prompt to compare the two replies on.")
    served = tuple(runtimes.serve(side.model_id, progress=progress, precision=side.precision) for side in (a, b))
    requests = []
    for model, side in zip(served, (a, b)):
        prompt = build_prompt(model.tokenizer, [], message, use_template=model.is_chat, system=system,
                              context=model.context, max_new_tokens=side.settings.max_new_tokens)
        requests.append(model.engine.submit(prompt.input_ids, side.settings, stop, prompt.stop_strings))
    chunks = [r.snapshot() for r in requests]
    while not all(c.done for c in chunks):
        yield CompareUpdate(*chunks, served)
        time.sleep(STREAM_INTERVAL_S * 2)
        chunks = [r.snapshot() for r in requests]
    final = chunks
    tokens = tuple(describe_steps(model.tokenizer, chunk.steps) for model, chunk in zip(served, final))
    yield CompareUpdate(*final, served, first_divergence(*tokens), tokens, done=True)
