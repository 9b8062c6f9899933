"""HTTP APIs beside the web UI: the OpenAI-compatible endpoints (wiring only; the logic lives in core)."""
