"""Label many texts at once from an uploaded CSV (one column holds the text) or TXT (one text a line)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from core.classify.classifier import assess
from core.classify.ood import AUTO, DEFAULT_THRESHOLD, normalised_entropy
from core.common.stopping import StopFlag
from core.common.uploads import UploadError, read_table, require_columns

MAX_ROWS = 2_000
MAX_BYTES = 5 * 2**20
CHUNK = 16  # texts per forward pass; also how often progress is reported and the stop flag checked
LIMITS = (f"Up to {MAX_ROWS:,} rows and {MAX_BYTES // 2**20} MiB per file. CSV: pick the column that holds the text. "
          f"TXT: one text per line. Long texts are truncated to the model's length.")
RESULT_COLUMNS = ["text", "label", "confidence", "entropy", "low_confidence"]  # then one p(<class>) column per class
TEXT_COLUMN_HINTS = ("text", "sentence", "review", "content", "body", "comment", "message")


@dataclass(frozen=True)
class BatchInput:
    frame: pd.DataFrame
    columns: list[str]
    suggested_column: str


@dataclass(frozen=True)
class BatchResult:
    table: pd.DataFrame  # RESULT_COLUMNS, then one probability column per class
    stopped: str  # why the run ended early ("" when it labelled every text)
    skipped_empty: int

    def summary(self) -> str:
        counts = ", ".join(f"{label}: {n}" for label, n in self.table["label"].value_counts().items())
        low = int(self.table["low_confidence"].sum()) if len(self.table) else 0
        parts = [f"Labelled {len(self.table):,} texts ({counts or 'none'}); {low} flagged low confidence."]
        if self.skipped_empty:
            parts.append(f"{self.skipped_empty} empty rows were skipped.")
        if self.stopped:
            parts.append(f"Stopped early ({self.stopped}): the table holds the rows done so far.")
        return " ".join(parts)


def read_batch(path: str | Path) -> BatchInput:
    """Read an upload under the batch limits and guess which column holds the text."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".txt"):
        raise UploadError(f"{path.name}: batch labelling takes a .csv or a .txt file.")
    frame = read_table(path, max_bytes=MAX_BYTES, max_rows=MAX_ROWS)
    columns = [str(c) for c in frame.columns]
    if not columns or frame.empty:
        raise UploadError(f"{path.name} has no rows to label.")
    return BatchInput(frame, columns, suggest_text_column(frame))


def suggest_text_column(frame: pd.DataFrame) -> str:
    """A column named like text, else the one with the longest strings on average."""
    for column in frame.columns:
        if str(column).strip().lower() in TEXT_COLUMN_HINTS:
            return str(column)
    lengths = {str(c): frame[c].astype(str).str.len().mean() for c in frame.columns}
    return max(lengths, key=lengths.get)


def texts_from(frame: pd.DataFrame, column: str | None) -> tuple[list[str], int]:
    """The non-empty texts of one column, and how many empty ones were dropped."""
    if not column:
        raise UploadError("Choose the column that holds the text.")
    require_columns(frame, [column], "the uploaded file")
    values = frame[column].fillna("").astype(str).str.strip()
    kept = values[values != ""].tolist()
    if not kept:
        raise UploadError(f"Column '{column}' has no text in it.")
    return kept, len(values) - len(kept)


def classify_batch(classifier, texts: list[str], threshold: float = DEFAULT_THRESHOLD,
                   progress: Callable[[float, str], None] | None = None, stop: StopFlag | None = None,
                   skipped_empty: int = 0, method: str = AUTO) -> BatchResult:
    """Label the texts in chunks with an out-of-distribution flag each, reporting progress and honouring Stop."""
    report = progress or (lambda *_: None)
    rows, labels, stopped = [], None, ""
    for start in range(0, len(texts), CHUNK):
        if stop is not None and stop.stopped:
            stopped = stop.reason
            break
        chunk = texts[start:start + CHUNK]
        probs, flags = assess(classifier, chunk, method, threshold)
        labels = probs.labels
        for text, row, flagged in zip(chunk, probs.probs, flags):
            top = int(np.argmax(row))
            rows.append({"text": text, "label": labels[top], "confidence": round(float(row[top]), 4),
                         "entropy": round(normalised_entropy(row), 4), "low_confidence": flagged.low,
                         **{f"p({name})": round(float(p), 4) for name, p in zip(labels, row)}})
        done = min(start + CHUNK, len(texts))
        report(done / len(texts), f"Labelled {done:,} of {len(texts):,} texts")
    table = pd.DataFrame(rows) if rows else pd.DataFrame(columns=RESULT_COLUMNS)
    return BatchResult(table, stopped, skipped_empty)


def save_results(table: pd.DataFrame, folder: Path, name: str = "classified.csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    table.to_csv(path, index=False)
    return path
