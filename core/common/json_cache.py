"""JSON files the app rewrites (precision choices, engine measurements, model cards): locked and replaced whole.

Two users' first loads can finish at once, in one process (threads) or several (an app and a
benchmark): an exclusive lock file serialises read-modify-write, and each write goes to a temporary
file renamed over the old one, so a reader never sees half a file and a crash never leaves one.
"""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

_thread_lock = threading.Lock()  # flock is per open file: threads of one process also need a lock


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (through `path.lock`) across threads and processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _thread_lock, open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_json(path: Path, default: Any = None) -> Any:
    """The file's value, or `default` when it is missing or unreadable (a foreign or damaged file)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def write_json(path: Path, value: Any) -> None:
    """Write to a temporary file in the same folder, then rename it over `path` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(value, handle, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def update_json(path: Path, change: Callable[[dict], dict]) -> dict:
    """Read-modify-write a JSON object under the lock; returns what was written."""
    with locked(path):
        value = change(read_json(path, {}))
        write_json(path, value)
        return value
