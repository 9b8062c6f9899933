"""Sampling, step by step: for one step of a reply, the next-token distribution after each stage the engine applies
(raw logits, repetition penalty, temperature, top-k, top-p, min-p) and the token that was drawn.

The raw logits are recomputed with the served model on exactly what it had read at that step (the prompt and the
reply's earlier tokens); the stages are the engine's own sampler stages with the reply's own settings, so the
last stage is the distribution the engine drew from.
"""
from __future__ import annotations

from dataclasses import dataclass

from core.chat.sampling import Stage, stages
from core.chat.serving import ChatRuntimes
from core.chat.session import ChatSession
from core.common.errors import InputError

TOP = 20


@dataclass(frozen=True)
class SamplingSteps:
    step: int  # 0-based
    stages: list[Stage]
    drawn: int  # the token the reply has at this step
    greedy: bool
    names: dict[int, str]  # token id -> readable text, for every token on the charts
    context: str  # the reply's text before this step


def sampling_steps(runtimes: ChatRuntimes, session: ChatSession, step: int) -> SamplingSteps:
    """The stages at `step` (1-based, as shown to users) of the conversation's last reply."""
    if not session.exchanges or not session.exchanges[-1].reply.steps:
        raise InputError("Send a message to a local model first: the steps are those of its last reply.")
    reply = session.exchanges[-1].reply
    if not 1 <= step <= len(reply.steps):
        raise InputError(f"Pick a step between 1 and {len(reply.steps)} (the reply's tokens).")
    served = session.served(runtimes)
    generated = [s.token_id for s in reply.steps]
    history = reply.prompt_ids + generated[:step - 1]
    logits = served.engine.exclusive(lambda backend: backend.full_logits(history)[-1])
    result = stages(reply.settings, history, logits, TOP)
    drawn = generated[step - 1]
    ids = {drawn, *(i for stage in result for i in stage.token_ids)}
    names = {i: served.tokenizer.decode([i]) for i in ids}
    return SamplingSteps(step - 1, result, drawn, reply.settings.greedy, names,
                         served.engine.decode(generated[:step - 1]))
