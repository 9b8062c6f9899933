"""Sampling, step by step: for one step of a reply, the next-token distribution after each stage the engine applies
(raw logits, repetition penalty, temperature, top-k, top-p, min-p) and the token that was drawn.

The raw logits are recomputed with the served model on exactly what it had read at that step (the prompt and the
reply's earlier tokens); the stages are the engine's own processors with the reply's own settings, so the last
stage is the distribution the engine drew from.
"""
from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go
from plotly.subplots import make_subplots

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

    def describe(self) -> str:
        last = self.stages[-1]
        how = "took the most likely token" if self.greedy else "drew from the last distribution"
        rank = last.token_ids.index(self.drawn) + 1 if self.drawn in last.token_ids else None
        where = f"its #{rank} choice at {last.probs[rank - 1]:.1%}" if rank else "outside the top 20"
        return (f"Step {self.step + 1}: after “…{self.context[-60:]}” the engine {how} and chose "
                f"**{self.names[self.drawn]!r}**, {where}; {last.candidates:,} tokens were still possible.")


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
    logits = served.backend.full_logits(history)[-1]
    result = stages(reply.settings, history, logits, TOP)
    drawn = generated[step - 1]
    ids = {drawn, *(i for stage in result for i in stage.token_ids)}
    names = {i: served.tokenizer.decode([i]) for i in ids}
    return SamplingSteps(step - 1, result, drawn, reply.settings.greedy, names,
                         served.engine.decode(generated[:step - 1]))


def stages_figure(steps: SamplingSteps) -> go.Figure:
    """One bar chart per stage (top 20 tokens), the drawn token in a contrasting colour."""
    rows = len(steps.stages)
    fig = make_subplots(rows=rows, cols=1, subplot_titles=[s.name + f" · {s.candidates:,} tokens possible"
                                                           for s in steps.stages], vertical_spacing=0.35 / rows)
    for row, stage in enumerate(steps.stages, 1):
        labels = [repr(steps.names[i])[1:-1] or "∅" for i in stage.token_ids]
        colours = ["#dc2626" if i == steps.drawn else "#6366f1" for i in stage.token_ids]
        fig.add_bar(x=labels, y=stage.probs, marker_color=colours, row=row, col=1, showlegend=False,
                    hovertemplate="%{x}: %{y:.2%}<extra></extra>")
        fig.update_yaxes(range=[0, 1], tickformat=".0%", row=row, col=1)
    fig.update_layout(height=230 * rows, margin=dict(l=40, r=10, t=40, b=40),
                      title=f"Step {steps.step + 1}: red is the token the reply has")
    return fig
