"""Gradio layout and event wiring; all model work happens in core/."""
