"""Pieces several tabs share: the model picker, the progress adapter, the Stop handler and error handling."""
from __future__ import annotations

import functools
import inspect
import logging
from typing import Callable

import gradio as gr

from core.common.errors import PlaygroundError
from core.common.stopping import RunControl
from core.services import Services

log = logging.getLogger("llm_playground")

# Heavy runs wait in core's WorkQueue (which shows each user their place), not in gradio's queue: they share
# many gradio workers. Stop must never wait behind anything.
HEAVY = dict(concurrency_limit=32, concurrency_id="heavy")
STOP = dict(queue=False)


def model_picker(services: Services, *tasks: str, label: str = "Model", value: str | None = None) -> gr.Dropdown:
    """Presets plus the user's stored models; any hub id or local folder can be typed in."""
    choices = services.model_choices(*tasks)
    picker = gr.Dropdown(choices=choices, value=value or (choices[0][1] if choices else None), label=label,
                         allow_custom_value=True, info="Pick a preset, or type a Hugging Face id or a local folder")
    # Opening the list re-reads it, so models saved by Fine-tune or sent from Quantize appear at once.
    picker.focus(refresh_picker(services, *tasks), None, picker, queue=False, api_visibility="private")
    return picker


def refresh_picker(services: Services, *tasks: str) -> Callable[[], dict]:
    """Event handler that reloads a picker's choices (e.g. after a fine-tune saved a model)."""
    return lambda: gr.update(choices=services.model_choices(*tasks))


def progress_callback(progress: gr.Progress) -> Callable[[float, str], None]:
    """core reports (fraction, message); gradio shows it as a progress bar."""
    return lambda fraction, message: progress(fraction, desc=message)


def stop_run(control: RunControl, when: str) -> str:
    """Stop button handler: the user's current run (running, or waiting in line) ends after the current `when`."""
    if not control.stop():
        return "Nothing is running."
    return f"⏹️ Stopping after the current {when}…"


def failure_message(err: Exception) -> str:
    """How a core error is shown in a tab's status line."""
    return f"⚠️ {err}"


def _unexpected(fn: Callable, err: Exception) -> gr.Error:
    """A bug, not bad input: the traceback goes to the log, the user gets a short message and keeps their work."""
    if isinstance(err, PlaygroundError):
        return gr.Error(str(err))
    log.exception("unexpected error in %s", getattr(fn, "__qualname__", fn))
    return gr.Error(f"Something went wrong on the server ({type(err).__name__}); it has been logged. Your inputs are "
                    "unchanged: try again, or try another model or setting.")


def guard(fn: Callable) -> Callable:
    """Wrap an event handler so an uncaught error becomes a readable gr.Error (generators stay generators)."""
    if getattr(fn, "__guarded__", False):
        return fn
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def guarded(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as err:
                raise _unexpected(fn, err) from err
    else:
        @functools.wraps(fn)
        def guarded(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as err:
                raise _unexpected(fn, err) from err
    guarded.__guarded__ = True
    return guarded
