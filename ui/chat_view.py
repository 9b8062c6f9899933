"""How the Chat tab shows what core computes: the token view (HTML and its click script), reply statistics, the
waiting line, why a reply ended, the tokenizer view, the sampling stages and a conversation as Markdown.

Core hands over numbers, enums and token ids; every sentence, colour and tag a user sees is made here, and every
string that came from a user or a model is escaped before it reaches the page.
"""
from __future__ import annotations

import html
import time

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.chat.sampling import Stage, StageName
from core.chat.faithful import SPEED_BATCH, Quality
from core.chat.session import ChatSession
from core.chat.stepwise import SamplingSteps
from core.chat.token_view import TOP_K, TokenInfo, TokenStep
from core.chat.tokenizer_view import Tokenized
from core.chat.types import FinishReason, ReplyStats, UserAction, WaitingInfo
from core.common.work_queue import duration, ordinal

FINISH_WORDS = {FinishReason.END_OF_TEXT: "end of text", FinishReason.LENGTH: "max new tokens",
                FinishReason.STOP_STRING: "next turn started", FinishReason.STOPPED: "stopped by user",
                FinishReason.DISCONNECTED: "the client went away", FinishReason.FAILED: "failed"}
ENDED_BY_WORDS = {UserAction.SEND: "ended: you sent a new message", UserAction.RETRY: "ended: you pressed Retry",
                  UserAction.BRANCH: "ended: you branched the reply", UserAction.LOAD: "ended: you loaded another model",
                  UserAction.CONNECT: "ended: you connected to a remote server",
                  UserAction.UNDO: "ended: you pressed Undo", UserAction.CLEAR: "ended: you pressed Clear",
                  UserAction.RESTORE: "ended: you restored a conversation"}


# ---- statistics and the waiting line -------------------------------------------------------------------------------
def describe_stats(stats: ReplyStats) -> str:
    """'42 tokens · 31.0 tok/s · first token 0.12 s · seed 7 · end of text'."""
    parts = [f"{stats.tokens} token{'s' if stats.tokens != 1 else ''}"]
    if stats.decode_tokens_per_s is not None:
        parts.append(f"{stats.decode_tokens_per_s:.1f} tok/s")
    if stats.first_token_s is not None:
        parts.append(f"first token {stats.first_token_s:.2f} s")
    if stats.batch > 1:
        parts.append(f"batched with up to {stats.batch - 1} other{'s' if stats.batch > 2 else ''}")
    if stats.seed is not None:
        parts.append(f"seed {stats.seed}")
    if stats.finish is FinishReason.REPLACED:
        parts.append(ENDED_BY_WORDS.get(stats.ended_by, "ended by your next action"))
    elif stats.finish is not None:
        parts.append(FINISH_WORDS[stats.finish])
    return " · ".join(parts)


def describe_waiting(waiting: WaitingInfo | None) -> str:
    if waiting is None:
        return ""
    return (f"Waiting in line: {ordinal(waiting.place)}, about {duration(waiting.wait_s)} "
            f"({waiting.running} replies being written)")


# ---- what serves a model, and how faithfully --------------------------------------------------------------------
def describe_quality(quality: Quality) -> str:
    """'96% same next tokens as fp32, perplexity 27.62 (fp32 27.47), kept 20 of 20 right answers'."""
    fp32 = f" (fp32 {quality.fp32_perplexity:.2f})" if quality.fp32_perplexity == quality.fp32_perplexity else ""
    words = f"{quality.agreement:.0%} same next tokens as fp32, perplexity {quality.perplexity:.2f}{fp32}"
    check = quality.generation
    if check is not None:
        words += (f", kept {check.kept} of fp32's {check.fp32_right} right answers to the check questions "
                  f"({check.identical} of {check.asked} replies word for word)")
    if quality.carried is not None:  # a variant made in another tab: its figures, not Chat's own probe
        carried = quality.carried
        words += (f", as the {carried.measured_by} tab measured it against the real fp32 model on {carried.tokens:,} "
                  f"tokens of {carried.text}")
    return words


def describe_candidate(name: str, quality: Quality) -> str:
    speed = (f"{quality.decode_tok_s:.0f} tok/s alone, {quality.batch_tok_s:.0f} tok/s for {SPEED_BATCH} users"
             if quality.decode_tok_s else "")
    verdict = "kept quality" if quality.kept else (
        "answers differ from fp32's" if quality.teacher_forced_ok else "predictions differ from fp32's")
    return f"{name}: {speed}; {describe_quality(quality)} → {verdict}"


def describe_ort_settings(settings: tuple[int, bool]) -> str:
    threads, spinning = settings
    return (f"ONNX Runtime runs with {threads or 'all the'} thread{'s' if threads != 1 else ''}, "
            f"{'spinning' if spinning else 'sleeping'} between runs (the fastest setting timed here)")


# ---- the token view --------------------------------------------------------------------------------------------
def _visible(text: str) -> str:
    """Text a reader can see: whitespace-only tokens and control bytes would vanish otherwise."""
    if not text:
        return "∅"
    text = "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}"
                   for c in text.replace("\n", "↵").replace("\t", "⇥"))
    return text if text.strip() else text.replace(" ", "␣")


def prob_colour(prob: float) -> str:
    """Red (unlikely) through yellow to green (likely), light enough to read black text on."""
    hue = int(120 * max(0.0, min(1.0, prob)))
    return f"hsl({hue}, 75%, 80%)"


def _alternatives(info: TokenInfo, step: int, ids: tuple[int, ...] | None) -> str:
    """The step's top choices; with token ids they are buttons that continue the reply from that token."""
    rows = []
    for n, alt in enumerate(info.alternatives):
        label = f"{html.escape(_visible(alt.text))} <small>{alt.prob:.1%}</small>"
        if ids is not None and n < len(ids):
            rows.append(f"<button class='tv-alt' data-step='{step}' data-token='{ids[n]}' "
                        f"title='continue the reply from this token'>{label}</button>")
        else:
            rows.append(f"<span class='tv-alt'>{label}</span>")
    return "".join(rows)


def token_view_html(tokens: list[TokenInfo], steps: list[TokenStep] | None = None) -> str:
    """Inline tokens coloured by probability. Tapping (or hovering) a token opens its top alternatives, which work
    on touch screens too; with `steps` (token ids) each alternative branches the reply. A table lists them all."""
    if not tokens:
        return "<p class='notice'>The token view appears here after a reply.</p>"
    spans = []
    for n, t in enumerate(tokens):
        ids = steps[n].alt_ids if steps and n < len(steps) else None
        spans.append(f"<span class='tv-tok' tabindex='0' style='background:{prob_colour(t.prob)};color:#111'>"
                     f"{html.escape(_visible(t.text))}<sub>{t.prob:.0%}</sub>"
                     f"<span class='tv-alts' role='menu'>{_alternatives(t, n, ids)}</span></span>")
    rows = "".join(
        f"<tr><td>{n}</td><td><b>{html.escape(_visible(t.text))}</b> {t.prob:.1%}</td>"
        + "".join(f"<td>{html.escape(_visible(a.text))} {a.prob:.1%}</td>" for a in t.alternatives) + "</tr>"
        for n, t in enumerate(tokens, 1))
    head = "".join(f"<th>#{k}</th>" for k in range(1, TOP_K + 1))
    branch = " Pick an alternative to continue the reply from it (the original is kept: ◀ ▶)." if steps else ""
    legend = ("<p class='notice'>Each token is coloured by the probability the model gave it "
              "(<span class='tv-key' style='background:hsl(0,75%,80%)'>&nbsp;low&nbsp;</span> → "
              "<span class='tv-key' style='background:hsl(120,75%,80%)'>&nbsp;high&nbsp;</span>). "
              f"Tap or hover a token for the model's top-5 choices at that step.{branch}</p>")
    return (f"<div class='token-view'>{legend}<div class='tv-line'>{''.join(spans)}</div>"
            f"<details><summary>Top-5 alternatives for every token</summary><table>"
            f"<tr><th>step</th><th>chosen</th>{head}</tr>{rows}</table></details></div>")


# Sends a click on an alternative to the server as (step, token) and closes the open pop-up, so it does not stay
# over another token once the branch has streamed in; clicks elsewhere in the view do nothing.
BRANCH_JS = ("element.addEventListener('click', (event) => { const alt = event.target.closest('button.tv-alt'); "
             "if (alt) { event.preventDefault(); if (document.activeElement) document.activeElement.blur(); "
             "trigger('click', {step: Number(alt.dataset.step), token: Number(alt.dataset.token)}); } });")


# ---- the tokenizer view ----------------------------------------------------------------------------------------
PALETTE = ("#fde68a", "#bfdbfe", "#bbf7d0", "#fbcfe8", "#ddd6fe", "#fed7aa")


def _piece_text(text: str) -> str:
    return text.replace(" ", "␣").replace("\n", "↵\n").replace("\t", "⇥")


def tokenizer_html(tokenized: Tokenized) -> str:
    """Coloured pieces (escaped), then a summary line; hover a piece for its spelling and id."""
    spans = []
    for n, piece in enumerate(tokenized.pieces):
        title = html.escape(f"#{n} id {piece.token_id} · {piece.spelling}", quote=True)
        if piece.special:
            spans.append(f"<span class='tok-special' title='{title}'>{html.escape(piece.spelling)}</span>")
        else:
            spans.append(f"<span class='tok-piece' style='background:{PALETTE[n % len(PALETTE)]}' title='{title}'>"
                         f"{html.escape(_piece_text(piece.text)) or '∅'}</span>")
    count = len(tokenized.pieces)
    ids = ", ".join(str(p.token_id) for p in tokenized.pieces[:200]) + (" ..." if count > 200 else "")
    template = (f"<details><summary>Chat template: the text as a user message is {tokenized.template_tokens} tokens"
                f"</summary><pre>{html.escape(tokenized.template)}</pre></details>" if tokenized.template else
                "<p class='notice'>No chat template (a base model or an encoder).</p>")
    return (f"<div class='tokenizer-view'><h4>{html.escape(tokenized.model_id)} · {html.escape(tokenized.kind)}</h4>"
            f"<p><b>{count}</b> tokens for {len(tokenized.text)} characters · "
            f"<b>{tokenized.chars_per_token:.2f}</b> characters per token</p>"
            f"<div class='tok-line'>{''.join(spans)}</div><details><summary>Token ids</summary><code>{ids}</code>"
            f"</details>{template}</div>")


# ---- sampling, step by step ------------------------------------------------------------------------------------
STAGE_WORDS = {StageName.RAW: "raw model output", StageName.PENALTY: "after repetition penalty",
               StageName.TEMPERATURE: "after temperature", StageName.TOP_K: "after top-k", StageName.TOP_P: "after top-p",
               StageName.MIN_P: "after min-p"}


def stage_title(stage: Stage) -> str:
    value = f" {stage.value:g}" if stage.value is not None else ""
    return f"{STAGE_WORDS[stage.name]}{value} · {stage.candidates:,} tokens possible"


def describe_sampling(steps: SamplingSteps) -> str:
    last = steps.stages[-1]
    how = "took the most likely token" if steps.greedy else "drew from the last distribution"
    rank = last.token_ids.index(steps.drawn) + 1 if steps.drawn in last.token_ids else None
    where = f"its #{rank} choice at {last.probs[rank - 1]:.1%}" if rank else "outside the top 20"
    return (f"Step {steps.step + 1}: after “…{steps.context[-60:]}” the engine {how} and chose "
            f"**{steps.names[steps.drawn]!r}**, {where}; {last.candidates:,} tokens were still possible.")


def stages_figure(steps: SamplingSteps) -> go.Figure:
    """One bar chart per stage (top 20 tokens), the drawn token in a contrasting colour."""
    rows = len(steps.stages)
    fig = make_subplots(rows=rows, cols=1, subplot_titles=[stage_title(s) for s in steps.stages],
                        vertical_spacing=0.35 / rows)
    for row, stage in enumerate(steps.stages, 1):
        labels = [repr(steps.names[i])[1:-1] or "∅" for i in stage.token_ids]
        colours = ["#dc2626" if i == steps.drawn else "#6366f1" for i in stage.token_ids]
        fig.add_bar(x=labels, y=stage.probs, marker_color=colours, row=row, col=1, showlegend=False,
                    hovertemplate="%{x}: %{y:.2%}<extra></extra>")
        fig.update_yaxes(range=[0, 1], tickformat=".0%", row=row, col=1)
    fig.update_layout(height=230 * rows, margin=dict(l=40, r=10, t=40, b=40),
                      title=f"Step {steps.step + 1}: red is the token the reply has")
    return fig


# ---- a conversation as Markdown --------------------------------------------------------------------------------
def conversation_markdown(session: ChatSession, model: str) -> str:
    lines = [f"# Conversation with {model}", "", f"*Exported {time.strftime('%Y-%m-%d %H:%M')} from LLM Playground.*",
             ""]
    if session.system is None or session.system.strip():
        lines += [f"**System prompt:** {session.system if session.system is not None else '(none)'}", ""]
    for exchange in session.exchanges:
        reply = exchange.reply
        versions = f" (version {exchange.shown + 1} of {len(exchange.replies)})" if len(exchange.replies) > 1 else ""
        lines += [f"**You:** {exchange.user}", "", f"**{model}{versions}:** {reply.text}", ""]
        if reply.stats:
            lines += [f"<sub>{describe_stats(reply.stats)}</sub>", ""]
    return "\n".join(lines)
