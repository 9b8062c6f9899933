"""Plotly charts for the bias probes (shared look: one colour per group, error bars for intervals)."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

_LAYOUT = dict(template="plotly_white", height=380, margin=dict(l=60, r=20, t=60, b=60))


def interval_bars(frame: pd.DataFrame, x: str, y: str, low: str, high: str, title: str, y_title: str,
                  color: str | None = None, reference: float | None = None, reference_text: str = "") -> go.Figure:
    """Bars of `y` per `x` with asymmetric error bars [low, high]; one trace per `color` value."""
    fig = go.Figure()
    for name, part in (frame.groupby(color, sort=False) if color else [(None, frame)]):
        fig.add_bar(x=part[x], y=part[y], name=str(name) if name is not None else y_title,
                    error_y=dict(type="data", symmetric=False, array=part[high] - part[y], arrayminus=part[y] - part[low]))
    if reference is not None:
        fig.add_hline(y=reference, line_dash="dash", line_color="#dc2626", annotation_text=reference_text)
    fig.update_layout(title=title, yaxis_title=y_title, barmode="group", showlegend=color is not None, **_LAYOUT)
    return fig


def histogram(values, title: str, x_title: str, reference: float | None = 0.0, bins: int = 40) -> go.Figure:
    fig = go.Figure(go.Histogram(x=list(values), nbinsx=bins, marker_color="#6366f1"))
    if reference is not None:
        fig.add_vline(x=reference, line_dash="dash", line_color="#dc2626")
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title="pairs", **_LAYOUT)
    return fig


def grouped_bars(frame: pd.DataFrame, x: str, y: str, color: str, title: str, y_title: str,
                 orientation: str = "v") -> go.Figure:
    fig = go.Figure()
    for name, part in frame.groupby(color, sort=False):
        if orientation == "h":
            fig.add_bar(y=part[x], x=part[y], name=str(name), orientation="h")
        else:
            fig.add_bar(x=part[x], y=part[y], name=str(name))
    axis = {"xaxis_title": y_title} if orientation == "h" else {"yaxis_title": y_title}
    layout = dict(_LAYOUT, height=max(380, 22 * frame[x].nunique() + 120)) if orientation == "h" else _LAYOUT
    fig.update_layout(title=title, barmode="group", **axis, **layout)
    if orientation == "h":
        fig.update_yaxes(autorange="reversed")
    return fig
