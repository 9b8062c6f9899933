"""What the model thought at each generated token: its probability and the top alternatives.

The engine records ids and probabilities only (cheap inside the decode loop); text is decoded
here, when a reply is shown, and rendered as escaped HTML coloured by probability.
"""
from __future__ import annotations

import html
from dataclasses import dataclass

TOP_K = 5


@dataclass(frozen=True)
class TokenStep:
    token_id: int
    prob: float  # probability the model gave the chosen token (softmax of raw logits)
    alt_ids: tuple[int, ...]  # the model's TOP_K most likely tokens at this step, best first
    alt_probs: tuple[float, ...]


@dataclass(frozen=True)
class TokenChoice:
    text: str
    prob: float


@dataclass(frozen=True)
class TokenInfo:
    text: str
    prob: float
    alternatives: tuple[TokenChoice, ...]


def describe_steps(tokenizer, steps: list[TokenStep]) -> list[TokenInfo]:
    """Decode every chosen and alternative token once (one batch call for all of them)."""
    ids = [s.token_id for s in steps] + [i for s in steps for i in s.alt_ids]
    texts = dict(zip(ids, tokenizer.batch_decode([[i] for i in ids])))
    return [TokenInfo(texts[s.token_id], s.prob, tuple(TokenChoice(texts[i], p) for i, p in zip(s.alt_ids, s.alt_probs)))
            for s in steps]


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


def render_html(tokens: list[TokenInfo], steps: list[TokenStep] | None = None) -> str:
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


# Sends a click on an alternative to the server as (step, token); clicks elsewhere in the view do nothing.
BRANCH_JS = ("element.addEventListener('click', (event) => { const alt = event.target.closest('button.tv-alt'); "
             "if (alt) { event.preventDefault(); trigger('click', {step: Number(alt.dataset.step), "
             "token: Number(alt.dataset.token)}); } });")
