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

from core.chat.sampling import SamplingSettings, control_range
from core.chat.serving import PRECISION_CHOICES
from core.common.errors import InputError, check_number
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
DEFAULT_CAP = 1024  # the chat page's Max new tokens cap when the caller does not give the server's
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
    # Compare's two sides: side A is `model` at `precision_a` with the settings' temperature and seed; side B's
    # values, where set, replace A's (unset: B keeps the page's own)
    precision_a: str = ""
    model_b: str = ""
    precision_b: str = ""
    temperature_b: float | None = None
    seed_b: int | None = None
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


def _model(value, problems: list[str]) -> str:
    model = str(value or "").strip()
    if model and not _MODEL_ID.match(model):
        problems.append("The model in the link is not a model id (like HuggingFaceTB/SmolLM2-135M-Instruct); "
                        "the default model is used.")
        return ""
    return model


def _setting(values: dict, key: str, name: str, cap: int, problems: list[str]):
    """Link value `key` for sampling setting `name`, within its slider's range; None when absent or out of range."""
    if values.get(key) in (None, ""):
        return None
    label, low, high, integer = control_range(name, cap)
    try:
        return check_number(label + ("" if key == name else " (side B)"), values[key], low, high, integer)
    except InputError as err:
        problems.append(f"{err} The default {getattr(SamplingSettings(), name)} is used." if key == name
                        else f"{err} Side B keeps the page's value.")
        return None


def _precision(values: dict, key: str, problems: list[str]) -> str:
    precision = str(values.get(key) or "")
    if precision and precision not in PRECISION_CHOICES:
        problems.append(f"There is no precision '{precision[:30]}'; precisions: {', '.join(PRECISION_CHOICES)}.")
        return ""
    return precision


def from_values(values: dict, max_new_tokens: int = DEFAULT_CAP) -> Lesson:
    """A checked Lesson from link parameters or a lesson file; problems become messages, never errors. Settings are
    checked against the Chat page's sliders (`max_new_tokens`: the server's cap)."""
    problems: list[str] = []
    tab = str(values.get("tab") or "chat").lower()
    if tab not in TABS:
        problems.append(f"There is no tab '{tab[:40]}'; the Chat tab is shown.")
        tab = "chat"
    model = _model(values.get("model"), problems)
    given = {name: _setting(values, name, name, max_new_tokens, problems) for name in SETTINGS}
    settings = SamplingSettings(**{name: value for name, value in given.items() if value is not None})
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
                  _text(values.get("notes"), "notes", problems), example, _precision(values, "precision_a", problems),
                  _model(values.get("model_b"), problems), _precision(values, "precision_b", problems),
                  _setting(values, "temperature_b", "temperature", max_new_tokens, problems),
                  _setting(values, "seed_b", "seed", max_new_tokens, problems), tuple(problems))


def lessons_dir() -> Path:
    return assets_dir() / "lessons"


def library() -> dict[str, Lesson]:
    """The lessons that ship with the app (assets/lessons/*.json), by file name."""
    return {path.stem: from_values(json.loads(path.read_text(encoding="utf-8")))
            for path in sorted(lessons_dir().glob("*.json"))}


def from_query(params: dict[str, str], max_new_tokens: int = DEFAULT_CAP) -> Lesson | None:
    """The lesson a page address asks for: `?lesson=<name>` (values in the address override the file's) or the
    values themselves; None for a plain address. `max_new_tokens`: the server's cap."""
    keys = {f.name for f in fields(Lesson)} | set(SETTINGS)
    given = {k: v for k, v in params.items() if k in keys | {"lesson"}}
    if not given:
        return None
    name = given.pop("lesson", None)
    base: dict = {}
    if name is not None:
        path = lessons_dir() / f"{name}.json"
        if not re.fullmatch(r"[a-z0-9_-]{1,40}", name) or not path.exists():
            lesson = from_values(given, max_new_tokens)
            return replace(lesson, messages=(f"There is no lesson '{name[:40]}'; lessons: "
                                             f"{', '.join(library())}.",) + lesson.messages)
        base = json.loads(path.read_text(encoding="utf-8"))
    return from_values(base | given, max_new_tokens)


def share_link(base_url: str, setup: Lesson) -> str:
    """The address that opens this setup again (what a teacher hands out): every value that is set."""
    values = {"tab": setup.tab, "model": setup.model, "prompt": setup.prompt, "system": setup.system,
              **{name: getattr(setup.settings, name) for name in SETTINGS},
              **{name: getattr(setup, name) for name in ("precision_a", "model_b", "precision_b", "temperature_b",
                                                         "seed_b")},
              "lock": ",".join(setup.lock)}
    return f"{base_url.rstrip('/')}/?{urlencode({k: v for k, v in values.items() if v not in ('', None)})}"
