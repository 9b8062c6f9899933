"""Reading user uploads (CSV, TSV, JSONL, TXT) into DataFrames, with messages a person can act on."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from core.common.errors import InputError

MAX_UPLOAD_BYTES = 20 * 2**20
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".txt")


class UploadError(InputError):
    """Something is wrong with an uploaded file; the message says what and how to fix it."""


def read_text_file(path: str | Path, max_bytes: int = MAX_UPLOAD_BYTES) -> str:
    """UTF-8 text of an upload, refusing binary files and files over the size limit."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise UploadError(f"{path.name} is {size / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.0f} MiB.")
    raw = path.read_bytes()
    if b"\x00" in raw[:8192]:
        raise UploadError(f"{path.name} looks like a binary file; upload a CSV, TSV, JSONL or TXT text file.")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UploadError(f"{path.name} is not valid UTF-8 (byte {err.start}); save it as UTF-8 and upload again.") from err


def read_table(path: str | Path, max_bytes: int = MAX_UPLOAD_BYTES, max_rows: int | None = None,
               txt_column: str = "text") -> pd.DataFrame:
    """A DataFrame from a CSV / TSV / JSONL file, or a TXT file read as one `txt_column` row per non-empty line."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise UploadError(f"{path.name}: unsupported file type '{suffix or 'none'}'; use {', '.join(TABLE_SUFFIXES)}.")
    text = read_text_file(path, max_bytes)
    if not text.strip():
        raise UploadError(f"{path.name} is empty.")
    try:
        if suffix == ".txt":
            frame = pd.DataFrame({txt_column: [line.strip() for line in text.splitlines() if line.strip()]})
        elif suffix in (".jsonl", ".json"):
            rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(l) for l in text.splitlines() if l.strip()]
            frame = pd.DataFrame(rows)
        else:
            import io

            frame = pd.read_csv(io.StringIO(text), sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as err:
        raise UploadError(f"{path.name} could not be parsed as {suffix[1:].upper()}: {str(err).splitlines()[0]}") from err
    if max_rows is not None and len(frame) > max_rows:
        raise UploadError(f"{path.name} has {len(frame):,} rows; the limit here is {max_rows:,}.")
    return frame


def require_columns(frame: pd.DataFrame, columns: list[str], name: str = "the file") -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UploadError(f"{name} has no column {', '.join(repr(c) for c in missing)}; "
                          f"its columns are {', '.join(repr(c) for c in frame.columns) or 'none'}.")
