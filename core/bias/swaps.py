"""Group-word swaps: a text with "he" made "she", "Muslim" made "Christian", "old" made "young"...

Used to build counterfactual training copies (core.finetune.mitigation) and to probe a classifier with the same
real texts, swapped (core.bias.before_after). The word lists are assets/counterfactual_pairs.json.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache

from core.models.paths import assets_dir

AXES = ("gender", "race/ethnicity", "religion", "nationality", "age", "disability")


@lru_cache(maxsize=1)
def swap_table() -> dict[str, dict[str, tuple[str, ...]]]:
    """axis -> word -> the words it is swapped for (assets/counterfactual_pairs.json)."""
    raw = json.loads((assets_dir() / "counterfactual_pairs.json").read_text(encoding="utf-8"))
    table: dict[str, dict[str, tuple[str, ...]]] = {}
    for axis in AXES:
        words: dict[str, list[str]] = {}
        for group in raw[axis]:
            for word in group:
                words.setdefault(word, []).extend(w for w in group if w != word and w not in words.get(word, []))
        table[axis] = {word: tuple(others) for word, others in words.items()}
    return table


def _match_case(word: str, like: str) -> str:
    return word.capitalize() if like[:1].isupper() else word


# "her" is both "him" (object) and "his" (possessive): possessive when a word other than these follows it.
_NOT_A_NOUN = re.compile(r"\s*(?:$|[^\w\s]|(?:to|and|or|in|on|at|for|with|from|by|about|as|so|but|"
                         r"because|again|too|back|up|down|out|off|now|then|very|that)\b)", re.I)


def _swap(match: re.Match, swaps: dict[str, tuple[str, ...]], n: int) -> str:
    article, word = match.group(1), match.group(2)
    key = word.lower()
    if key == "her" and "his" in swaps[key]:
        choice = "him" if _NOT_A_NOUN.match(match.string, match.end()) else "his"
    else:
        choice = swaps[key][n % len(swaps[key])]
    if article:  # "a Muslim" -> "an Atheist"
        article = _match_case("an" if choice[0] in "aeiou" else "a", article) + match.group(0)[len(article):-len(word)]
    return (article or "") + _match_case(choice, word)


def counterfactuals(text: str, axes: tuple[str, ...] = AXES) -> list[str]:
    """The text with each axis's group words swapped, one copy per alternative (none when it mentions no group)."""
    copies = []
    for axis in axes:
        swaps = swap_table()[axis]
        words = "|".join(map(re.escape, sorted(swaps, key=len, reverse=True)))
        pattern = re.compile(rf"\b(?:(an?)\s+)?({words})\b", re.I)
        found = {m.group(2).lower() for m in pattern.finditer(text)} - {"her"}
        if not found and not pattern.search(text):
            continue
        for n in range(max([len(swaps[w]) for w in found] or [1])):
            copy = pattern.sub(lambda m: _swap(m, swaps, n), text)
            if copy != text and copy not in copies:
                copies.append(copy)
    return copies


def swap_pairs(texts: list[str], axes: tuple[str, ...] = AXES) -> tuple[list[int], list[str]]:
    """(index of the original text, swapped copy) for every swap of every text that mentions a group word."""
    origins, copies = [], []
    for i, text in enumerate(texts):
        for copy in counterfactuals(text, axes):
            origins.append(i)
            copies.append(copy)
    return origins, copies
