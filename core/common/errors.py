"""The project's own error types: what a person using the app can act on, as opposed to bugs.

Tabs catch `PlaygroundError` and show its message; anything else is a bug, logged with its traceback
and shown as a short "unexpected error" notice (ui.components.guard).
"""
from __future__ import annotations


class PlaygroundError(Exception):
    """A problem the user can act on; the message is written for them."""


class InputError(PlaygroundError, ValueError):
    """A value the user gave cannot be used as given (empty text, a number out of range, a bad template...)."""


class StoppedError(PlaygroundError):
    """The user (or the run's time budget) stopped the work before it produced a result."""


class BusyError(PlaygroundError):
    """The user already has a run going, or the machine's queue is full."""


def check_number(name: str, value, low: float | None = None, high: float | None = None, integer: bool = False):
    """`value` as an int or float within [low, high], or an InputError that names the setting and its range."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number; got {value!r}.") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise InputError(f"{name} must be a finite number; got {value!r}.")
    if integer and number != int(number):
        raise InputError(f"{name} must be a whole number; got {value!r}.")
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = (f"between {low:g} and {high:g}" if low is not None and high is not None
                  else f"at least {low:g}" if low is not None else f"at most {high:g}")
        raise InputError(f"{name} must be {bounds}; got {value:g}." if isinstance(value, (int, float))
                         else f"{name} must be {bounds}; got {value!r}.")
    return int(number) if integer else number
