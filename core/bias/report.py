"""A bias report: one section per probe run, shown on screen and saved as self-contained HTML and JSON."""
from __future__ import annotations

import hashlib
import html
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core.common.errors import InputError


@dataclass(frozen=True)
class MetricNote:
    """What a metric measures and what it cannot tell, in plain words."""

    metric: str
    measures: str
    caveat: str

    def sentence(self) -> str:
        return f"{self.metric}: {self.measures} Caveat: {self.caveat}"


@dataclass
class ReportSection:
    probe: str  # "counterfactual" | "crows_pairs" | "generation" | "fairness"
    title: str
    models: dict[str, str]  # role ("classifier", "language model") -> model id
    settings: dict
    data_hash: str
    summary: pd.DataFrame
    notes: list[MetricNote]
    results: dict  # the numbers, JSON-ready
    figures: list[go.Figure] = field(default_factory=list)
    seed: int | None = None

    def headline(self) -> str:
        models = ", ".join(f"{role} `{mid}`" for role, mid in self.models.items())
        return f"**{self.title}** — {models}; data sha256 `{self.data_hash[:12]}`"


def data_hash(frame: pd.DataFrame) -> str:
    """sha256 of the rows as CSV, so a report names exactly the data it was computed on."""
    return hashlib.sha256(frame.to_csv(index=False).encode("utf-8")).hexdigest()


def _jsonable(value):
    """Numbers and tables as plain JSON (NaN becomes null)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, pd.DataFrame):
        return _jsonable(value.to_dict(orient="records"))
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def report_dict(sections: list[ReportSection], created: datetime | None = None) -> dict:
    created = created or datetime.now(timezone.utc)
    return {
        "created": created.isoformat(timespec="seconds"),
        "sections": [{
            "probe": s.probe, "title": s.title, "models": s.models, "settings": _jsonable(s.settings), "seed": s.seed,
            "data_sha256": s.data_hash, "summary": _jsonable(s.summary), "results": _jsonable(s.results),
            "notes": [{"metric": n.metric, "measures": n.measures, "caveat": n.caveat} for n in s.notes],
        } for s in sections],
    }


def report_json(sections: list[ReportSection], created: datetime | None = None) -> str:
    return json.dumps(report_dict(sections, created), indent=1, allow_nan=False)


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2rem auto;padding:0 1rem;color:#1f2937}
h1{color:#3730a3} h2{border-bottom:2px solid #e0e7ff;padding-bottom:.3rem;margin-top:2.5rem}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem} th,td{border:1px solid #d1d5db;padding:.3rem .6rem;text-align:left}
th{background:#eef2ff} .meta{color:#4b5563;font-size:.9rem} .notes li{margin:.4rem 0}
"""


def _section_html(section: ReportSection, first_figure: bool) -> tuple[str, bool]:
    parts = [f"<h2>{html.escape(section.title)}</h2>", "<p class='meta'>"]
    parts += [f"{html.escape(role)}: <code>{html.escape(mid)}</code><br>" for role, mid in section.models.items()]
    settings = ", ".join(f"{k} = {v}" for k, v in section.settings.items())
    parts.append(f"settings: {html.escape(settings)}<br>seed: {section.seed}<br>data sha256: <code>{section.data_hash}</code></p>")
    parts.append(section.summary.to_html(index=False, float_format=lambda x: f"{x:.4g}", na_rep="–", border=0))
    for figure in section.figures:
        # plotly.js goes inline once, so the file opens offline with no other files.
        parts.append(figure.to_html(full_html=False, include_plotlyjs="inline" if first_figure else False))
        first_figure = False
    parts.append("<h3>What the numbers mean</h3><ul class='notes'>")
    parts += [f"<li><b>{html.escape(n.metric)}</b>: {html.escape(n.measures)} <i>Caveat: {html.escape(n.caveat)}</i></li>"
              for n in section.notes]
    parts.append("</ul>")
    return "\n".join(parts), first_figure


def report_html(sections: list[ReportSection], created: datetime | None = None) -> str:
    created = created or datetime.now(timezone.utc)
    body, first = [], True
    for section in sections:
        text, first = _section_html(section, first)
        body.append(text)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>LLM Playground bias report</title>"
            f"<style>{_STYLE}</style></head><body><h1>LLM Playground bias report</h1>"
            f"<p class='meta'>created {created.isoformat(timespec='seconds')} · {len(sections)} probe(s)</p>"
            + "\n".join(body) + "</body></html>")


def write_report(sections: list[ReportSection], folder: Path) -> tuple[Path, Path]:
    """Save the HTML and JSON reports (same timestamp in both) into `folder`."""
    if not sections:
        raise InputError("run at least one probe before saving a report")
    created = datetime.now(timezone.utc)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = created.strftime("%Y%m%d-%H%M%S")
    html_path, json_path = folder / f"bias-report-{stamp}.html", folder / f"bias-report-{stamp}.json"
    html_path.write_text(report_html(sections, created), encoding="utf-8")
    json_path.write_text(report_json(sections, created), encoding="utf-8")
    return html_path, json_path
