"""Chat: prompts, the generation engine and its backends, sessions, and the per-token view."""
