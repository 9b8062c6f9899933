"""Pieces several tabs share: the model picker and the progress adapter."""
from __future__ import annotations

from typing import Callable

import gradio as gr

from core.services import Services
from core.stopping import StopFlag


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


def stop_run(flag: StopFlag | None, when: str) -> str:
    """Stop button handler for a run that hands its flag to a gr.State; `when` says where it ends."""
    if flag is None:
        return "Nothing is running."
    flag.stop()
    return f"⏹️ Stopping after the current {when}…"


def failure_message(err: Exception) -> str:
    """How a core error is shown in a tab's status line."""
    return f"⚠️ {err}"
