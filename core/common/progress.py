"""One progress bar for work made of stages: each stage reports 0..1 of its own, and the bar shows the whole."""
from __future__ import annotations

from typing import Callable

Progress = Callable[[float, str], None]


def span(progress: Progress, start: float, end: float) -> Progress:
    """A stage that fills [start, end] of `progress`: its own 0..1 is mapped there."""
    return lambda fraction, message: progress(start + (end - start) * min(1.0, max(0.0, fraction)), message)


def forward_only(progress: Progress) -> Progress:
    """The bar never moves back, even when a stage restarts its own count (a retry, a second export)."""
    shown = [0.0]

    def report(fraction: float, message: str) -> None:
        shown[0] = max(shown[0], fraction)
        progress(shown[0], message)

    return report
