"""Lesson links: a URL (or a lesson file) that opens the app on a tab with the model, prompt and settings preset,
some controls locked, and a few lines of notes for the teacher.

Everything in a link comes from somewhere else on the web, so it is data, never markup: each value is checked
against what its control accepts (numbers within range, a model id that looks like one, a tab and locks from fixed
lists), values out of range are replaced by the defaults with a message that says so, and text ends up only as
the value of a text box.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import urlencode

from core.chat.sampling import SamplingSettings
from core.common.errors import InputError
from core.explain.examples import EXAMPLES
from core.models.paths import assets_dir

# tab value -> (top-level tab, sub-tab of the Chat or Explain tab or "")
TABS = {"chat": ("chat", ""), "compare": ("chat", "compare"), "sampling": ("chat", "sampling"),
        "tokenizer": ("chat", "tokenizer"), "classify": ("classify", ""), "explain": ("explain", ""),
        "lens": ("explain", "explain_lens_view"), "patching": ("explain", "explain_patching_view"),
        "contrast": ("explain", "explain_contrast_view"), "bias": ("bias", "")}
LOCKABLE = ("model", "system", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "max_new_tokens", "seed")
SETTINGS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "max_new_tokens", "seed")
MAX_TEXT = 4_000
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)?$")  # hub-style ids only: no paths


@dataclass(frozen=True)
class Lesson:
    tab: str = "chat"
    model: str = ""
    prompt: str = ""
    system: str = ""
    settings: SamplingSettings = field(default_factory=SamplingSettings)
    lock: tuple[str, ...] = ()
    title: str = ""
    notes: str = ""  # for the teacher: what to show and what to ask
    example: str = ""  # an Explain example pair (core.explain.examples) that fills the lens, patching and contrast views
    messages: tuple[str, ...] = ()  # what was wrong with the link, and what was used instead

    @property
    def top_tab(self) -> str:
        return TABS[self.tab][0]

    @property
    def sub_tab(self) -> str:
        return TABS[self.tab][1]


def _text(value, name: str, problems: list[str]) -> str:
    text = str(value or "")
    if len(text) > MAX_TEXT:
        problems.append(f"'{name}' was longer than {MAX_TEXT:,} characters and was cut.")
    return text[:MAX_TEXT]


def from_values(values: dict) -> Lesson:
    """A checked Lesson from link parameters or a lesson file; problems become messages, never errors."""
    problems: list[str] = []
    tab = str(values.get("tab") or "chat").lower()
    if tab not in TABS:
        problems.append(f"There is no tab '{tab[:40]}'; the Chat tab is shown.")
        tab = "chat"
    model = str(values.get("model") or "").strip()
    if model and not _MODEL_ID.match(model):
        problems.append("The model in the link is not a model id (like HuggingFaceTB/SmolLM2-135M-Instruct); "
                        "the default model is used.")
        model = ""
    settings = SamplingSettings()
    for name in SETTINGS:
        if values.get(name) not in (None, ""):
            try:
                settings = replace(settings, **{name: float(values[name])})
            except (InputError, ValueError) as err:
                problems.append(f"{err} The default {getattr(SamplingSettings(), name)} is used.")
    locks = values.get("lock") or ()
    locks = locks.split(",") if isinstance(locks, str) else list(locks)
    unknown = [name for name in locks if name.strip() not in LOCKABLE]
    if unknown:
        problems.append(f"These controls cannot be locked: {', '.join(n[:30] for n in unknown[:5])}.")
    example = str(values.get("example") or "")
    if example and example not in EXAMPLES:
        problems.append(f"There is no example '{example[:40]}'; examples: {', '.join(EXAMPLES)}.")
        example = ""
    return Lesson(tab, model, _text(values.get("prompt"), "prompt", problems), _text(values.get("system"), "system",
                                                                                      problems),
                  settings, tuple(n.strip() for n in locks if n.strip() in LOCKABLE), _text(values.get("title"), "title",
                                                                                           problems)[:200],
                  _text(values.get("notes"), "notes", problems), example, tuple(problems))


def lessons_dir() -> Path:
    return assets_dir() / "lessons"


def library() -> dict[str, Lesson]:
    """The lessons that ship with the app (assets/lessons/*.json), by file name."""
    return {path.stem: from_values(json.loads(path.read_text(encoding="utf-8")))
            for path in sorted(lessons_dir().glob("*.json"))}


def from_query(params: dict[str, str]) -> Lesson | None:
    """The lesson a page address asks for: `?lesson=<name>` (values in the address override the file's) or the
    values themselves; None for a plain address."""
    keys = {f.name for f in fields(Lesson)} | set(SETTINGS)
    given = {k: v for k, v in params.items() if k in keys | {"lesson"}}
    if not given:
        return None
    name = given.pop("lesson", None)
    base: dict = {}
    if name is not None:
        path = lessons_dir() / f"{name}.json"
        if not re.fullmatch(r"[a-z0-9_-]{1,40}", name) or not path.exists():
            lesson = from_values(given)
            return replace(lesson, messages=(f"There is no lesson '{name[:40]}'; lessons: "
                                             f"{', '.join(library())}.",) + lesson.messages)
        base = json.loads(path.read_text(encoding="utf-8"))
    return from_values(base | given)


def share_link(base_url: str, tab: str, model: str, prompt: str, system: str, settings: SamplingSettings,
               lock: tuple[str, ...] = ()) -> str:
    """The address that opens this setup again (what a teacher hands out)."""
    values = {"tab": tab, "model": model, "prompt": prompt, "system": system,
              **{name: getattr(settings, name) for name in SETTINGS if getattr(settings, name) is not None}}
    if lock:
        values["lock"] = ",".join(lock)
    return f"{base_url.rstrip('/')}/?{urlencode({k: v for k, v in values.items() if v not in ('', None)})}"
