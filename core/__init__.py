"""LLM Playground core: plain Python model code shared by every tab (never imports gradio)."""
