"""Figures and HTML for the logit lens, activation patching and contrast views: token text in the cells, exact values
on hover, a title that says what is shown. Everything the model or the user wrote is escaped before it reaches HTML."""
from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.explain.contrastive import Contrast
from core.explain.lens import LensResult
from core.explain.patching import PatchingResult
from core.explain.residual import SITES
from core.explain.shap_attribution import coloured_tokens

CELL_CHARS = 7  # token text kept in a heatmap cell
_MARGIN = {"l": 10, "r": 10, "t": 80, "b": 10}


def plot_text(text: str) -> str:
    """Plotly reads a few HTML tags in its text (links among them): the markup characters are escaped."""
    return html.escape(text, quote=False)


def cell_text(token: str, chars: int = CELL_CHARS) -> str:
    """A token as it fits in a plot's cell or tick: visible whitespace, cut with an ellipsis, markup escaped."""
    shown = token.replace("\n", "⏎").replace("\t", "⇥")
    shown = shown.strip() if shown.strip() else "␣" * max(1, len(shown))
    return plot_text(shown if len(shown) <= chars else shown[:chars - 1] + "…")


def _position_axis(labels: list[str], title: str, chars: int = CELL_CHARS) -> dict:
    """Positions as numbers with the tokens as tick labels (a repeated token keeps its own column)."""
    return {"tickvals": list(range(len(labels))), "ticktext": [cell_text(t, chars) for t in labels], "tickangle": -45,
            "title": title, "showgrid": False, "zeroline": False}


# ---- logit lens ----------------------------------------------------------------------------------------------------
def lens_heatmap(result: LensResult) -> go.Figure:
    """Layers up, positions across: each cell shows the lens's top next-token guess, coloured by its probability;
    the strip under it is the entropy of the model's own output at each position."""
    rows, positions = result.n_rows, result.n_positions
    labels = result.prompt.labels
    top_prob = result.top_probs[:, :, 0]
    hover = [[(f"<b>{plot_text(result.row_names[r])}</b>, position {p} (after {plot_text(repr(labels[p]))})<br>"
               f"top guess {plot_text(repr(result.top_tokens[r][p][0]))}: {top_prob[r, p]:.2%}<br>"
               f"entropy {result.entropy[r, p]:.2f} bits<br>"
               f"the model's answer {plot_text(repr(result.predicted[p]))}: rank {result.prediction.rank[r, p]:,}, "
               f"{result.prediction.prob[r, p]:.2%}<br><i>click for the top-10</i>")
              for p in range(positions)] for r in range(rows)]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[rows, 1.6], vertical_spacing=0.03)
    fig.add_trace(go.Heatmap(
        z=top_prob, x=list(range(positions)), y=list(range(rows)), zmin=0, zmax=1, colorscale="Blues", name="lens",
        text=[[cell_text(result.top_tokens[r][p][0]) for p in range(positions)] for r in range(rows)],
        texttemplate="%{text}", textfont={"size": 10}, customdata=hover, hovertemplate="%{customdata}<extra></extra>",
        colorbar={"title": "probability of<br>the top guess", "len": 0.8, "y": 0.6}), row=1, col=1)
    output_entropy = result.entropy[-1]
    fig.add_trace(go.Heatmap(
        z=[output_entropy], x=list(range(positions)), y=[0], colorscale="Oranges", zmin=0, showscale=False,
        name="entropy", text=[[f"{e:.1f}" for e in output_entropy]], texttemplate="%{text}", textfont={"size": 10},
        customdata=[[f"position {p}: the model's output has entropy {e:.3f} bits (0 = certain, 1 = a coin flip "
                     "between two tokens, 3.3 = ten equally likely)" for p, e in enumerate(output_entropy)]],
        hovertemplate="%{customdata}<extra></extra>"), row=2, col=1)
    fig.update_yaxes(tickvals=list(range(rows)), ticktext=["emb"] + [str(i) for i in range(rows - 1)],
                     title="layer (its output)", row=1, col=1)
    fig.update_yaxes(tickvals=[0], ticktext=["entropy<br>(bits)"], row=2, col=1)
    fig.update_xaxes(**_position_axis(labels, "position: the token read (each cell: the next-token guess after it)"),
                     row=2, col=1)
    fig.update_layout(title=f"Logit lens: the top next-token guess after each layer of {plot_text(result.model_id)}<br>"
                            "<sub>each layer's residual stream read through the final norm and unembedding; the top "
                            "row is the model's own output</sub>",
                      height=int(min(1400, 22 * rows + 260)), margin=_MARGIN, plot_bgcolor="white")
    return fig


def lens_lines(result: LensResult, position: int) -> go.Figure:
    """At one position: the rank and probability of the model's answer (and of the followed tokens) at each layer,
    with the entropy of each layer's guess."""
    result.check_cell(0, position)
    layers = list(range(result.n_rows))
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.07, row_heights=[0.4, 0.4, 0.2],
                        subplot_titles=("probability", "rank (1 = the lens's top guess; log scale)",
                                        "entropy of the layer's guess (bits)"))
    answer = result.predicted[position]
    tracks = [(f"{answer!r} (the model's answer)", result.prediction)] + [(repr(t.label), t) for t in result.followed]
    for index, (name, track) in enumerate(tracks):
        colour = f"hsl({(index * 137) % 360}, 65%, 42%)"
        hover = [f"{plot_text(name)} after {plot_text(result.row_names[r])}: probability {track.prob[r, position]:.2%}, "
                 f"rank {track.rank[r, position]:,}" for r in layers]
        for row, values in ((1, track.prob[:, position]), (2, track.rank[:, position])):
            fig.add_trace(go.Scatter(x=layers, y=values, mode="lines+markers", name=plot_text(name), legendgroup=name,
                                     showlegend=row == 1, line={"color": colour}, customdata=hover,
                                     hovertemplate="%{customdata}<extra></extra>"), row=row, col=1)
    fig.add_trace(go.Scatter(x=layers, y=result.entropy[:, position], mode="lines+markers", name="entropy",
                             line={"color": "#9a3412"}, showlegend=False,
                             hovertemplate="after row %{x}: %{y:.2f} bits<extra></extra>"), row=3, col=1)
    fig.update_yaxes(range=[0, 1], tickformat=".0%", row=1, col=1)
    fig.update_yaxes(type="log", autorange="reversed", row=2, col=1)
    fig.update_yaxes(rangemode="tozero", row=3, col=1)
    fig.update_xaxes(tickvals=layers, ticktext=["emb"] + [str(i) for i in layers[:-1]], row=3, col=1,
                     title="layer (its output)")
    settles = result.row_names[result.settles_at(position)]
    label = result.prompt.labels[position]
    fig.update_layout(title=f"Position {position} (after {plot_text(repr(label))}): when does {plot_text(repr(answer))} "
                            f"appear?<br><sub>it is the lens's top guess from {plot_text(settles)} on</sub>",
                      height=620, margin=_MARGIN, legend={"orientation": "h", "y": -0.08}, plot_bgcolor="white")
    return fig


def lens_top_html(result: LensResult, row: int, position: int) -> str:
    """One cell's top-10 as a small table with probability bars."""
    top = result.top(row, position)
    lines = "".join(
        f"<tr><td>{k + 1}</td><td style='white-space:nowrap'><code>{html.escape(repr(token))}</code></td>"
        f"<td style='width:40%'>"
        f"<div style='background:#2563eb;height:0.9em;width:{prob:.1%};min-width:1px'></div></td>"
        f"<td style='text-align:right'>{prob:.2%}</td></tr>" for k, (token, prob, _id) in enumerate(top))
    label = result.prompt.labels[position]
    return (f"<div class='lens-top'><b>{html.escape(result.row_names[row])}, position {position} "
            f"(after {html.escape(repr(label))})</b>: top-10 next-token guesses · entropy "
            f"{result.entropy[row, position]:.2f} bits<table style='width:100%;font-size:0.95em'>"
            f"<tr><th>#</th><th>token</th><th></th><th>probability</th></tr>{lines}</table></div>")


# ---- activation patching -------------------------------------------------------------------------------------------
def _pair_labels(result: PatchingResult) -> list[str]:
    return [a if a == b else f"{a}/{b}" for a, b in zip(result.clean.labels, result.corrupted.labels)]


def patching_figure(result: PatchingResult) -> go.Figure:
    """Layers up, positions across, one panel per patched site: the share of the clean logit difference restored."""
    sites, labels = result.sites, _pair_labels(result)
    layers, positions = result.restored[sites[0]].shape
    fig = make_subplots(rows=1, cols=len(sites), shared_yaxes=True, horizontal_spacing=0.03,
                        subplot_titles=[f"patching the {SITES[s]}" for s in sites])
    show_text = positions * len(sites) <= 40  # narrower cells would only hold clutter: hover gives the value
    diff_name = f"{result.target.label} − {result.foil.label}"
    for col, site in enumerate(sites, start=1):
        share = result.restored[site]
        shown = share.copy()
        shown[:, :result.first_diff] = np.nan  # equal in both prompts: nothing to patch
        hover = [[(f"<b>{SITES[site]}</b> after layer {layer}, position {p} ({plot_text(labels[p])})<br>"
                   + ("the same token in both prompts up to here: the states are equal, patching changes nothing"
                      if p < result.first_diff else
                      f"restores {share[layer, p]:.1%} of the difference<br>{plot_text(diff_name)}: "
                      f"{result.patched_diff[site][layer, p]:+.3f} (clean {result.clean_diff:+.3f}, "
                      f"corrupted {result.corrupted_diff:+.3f})"))
                  for p in range(positions)] for layer in range(layers)]
        fig.add_trace(go.Heatmap(
            z=shown, x=list(range(positions)), y=list(range(layers)), zmin=-1, zmax=1, zmid=0, colorscale="RdBu",
            reversescale=True, customdata=hover, hovertemplate="%{customdata}<extra></extra>", hoverongaps=True,
            text=[[f"{v:.2f}" if abs(v) >= 0.05 else "" for v in row] for row in shown] if show_text else None,
            texttemplate="%{text}" if show_text else None, textfont={"size": 9}, showscale=col == len(sites),
            colorbar={"title": "share restored<br>(1 = as clean)"}), row=1, col=col)
        fig.update_xaxes(**_position_axis(labels, "position (clean/corrupted token)", 2 * CELL_CHARS + 1), row=1, col=col)
    fig.update_yaxes(showgrid=False, zeroline=False)
    fig.update_yaxes(title="layer", row=1, col=1)
    fig.update_layout(
        title=(f"Activation patching: which states carry {plot_text(result.target.label)} rather than "
               f"{plot_text(result.foil.label)}?<br><sub>each cell: the corrupted prompt run with that one state "
               "copied from the clean run; red = the clean answer comes back, grey = identical in both prompts</sub>"),
        height=int(min(1200, 20 * layers + 260)), margin=_MARGIN, plot_bgcolor="#e5e7eb")
    return fig


# ---- contrast ------------------------------------------------------------------------------------------------------
def contrast_html(contrast: Contrast, output: int) -> str:
    """The prompt shaded by each token's push towards the target (red) or the foil (blue), with what the method is."""
    attribution = contrast.attribution
    column = attribution.values[:, output]
    what = html.escape(attribution.output_names[output])
    return (f'<div class="shap-text" style="font-size:1.2em;line-height:2.2;white-space:pre-wrap">'
            f'{coloured_tokens(attribution.tokens, column)}</div>'
            '<div style="font-size:0.85em;margin-top:6px;opacity:0.85">'
            '<span style="background:rgba(220,38,38,0.6);padding:0 4px">red</span> raises, '
            '<span style="background:rgba(37,99,235,0.6);padding:0 4px">blue</span> lowers '
            f'<b>{what}</b> ({html.escape(attribution.unit)}); hover a token for its value. '
            f'<b>Method:</b> {html.escape(attribution.method)}: {html.escape(contrast.completeness())}.<br>'
            f'<b>Caveat:</b> {html.escape(contrast.caveat)}</div>')
