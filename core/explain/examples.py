"""Example pairs for the logit lens, patching and contrast views, chosen so they work on the packaged SmolLM2-135M:
both prompts have the same number of tokens and each answer is one token (tests/test_explain_inside.py checks it)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExamplePair:
    title: str  # shown in the menus
    clean: str
    corrupted: str  # the clean prompt with a few tokens changed, as many tokens in all
    target: str  # the answer after the clean prompt
    foil: str  # the answer after the corrupted prompt (and the contrast's "and not")
    look_for: str  # what a class should see


EXAMPLES: dict[str, ExamplePair] = {
    "landmark": ExamplePair(
        "Landmark → city: Eiffel Tower / Colosseum", "The Eiffel Tower is in the city of",
        "The Colosseum is in the city of", "Paris", "Rome",
        "The subject's last token ('iffel' / 'um') carries the fact through the middle layers; the last position picks "
        "it up late."),
    "capital": ExamplePair(
        "Country → capital: France / Italy", "The capital of France is", "The capital of Italy is", "Paris", "Rome",
        "One word changes the answer: patching shows where ' France' is read and when the answer moves to the end."),
    "agreement": ExamplePair(
        "Grammar: keys are / key is", "The keys to the cabinet", "The key to the cabinet", "are", "is",
        "Singular or plural is decided by ' keys', three tokens before the verb: patching shows how it travels."),
}
DEFAULT_EXAMPLE = "landmark"
