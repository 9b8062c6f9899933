"""Multiple-choice tasks scored by log-likelihood, as lm-evaluation-harness scores them.

A task is a file of items, each a question, its choices and the right answer (optionally a few-shot prefix). The
model reads `prefix + question` and each choice is scored as the continuation `" " + choice` (lm-eval's target
delimiter), tokenized the way lm-eval does it: trailing spaces of the context move to the continuation, the whole
string is encoded and the context's tokens are cut off it, with no special tokens (an empty context reads the BOS
token, or EOS when there is none). `acc` picks the choice with the highest summed log-probability; `acc_norm` divides
each sum by the length of the choice text in characters (lm-eval's `completion_len`; for ASCII text that is its
length in bytes). Both come with percentile bootstrap intervals over the items.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.bias.likelihood import prefix_token_id
from core.bias.stats import Interval, bootstrap_mean
from core.common.uploads import UploadError, read_table, require_columns
from core.evaluate.scoring import ScoreRequest, TokenScores
from core.models.paths import assets_dir

FIELDS = ["question", "choices", "answer"]
MAX_TASK_BYTES = 5 * 2**20
MAX_ITEMS = 5000
TASKS_DIR = "eval_tasks"


@dataclass(frozen=True)
class ChoiceItem:
    row: int  # 1-based row of the file
    question: str
    choices: tuple[str, ...]
    answer: int  # index into choices
    prefix: str = ""


@dataclass(frozen=True)
class ChoiceTask:
    name: str
    items: tuple[ChoiceItem, ...]
    source: str  # where it came from, in words
    sha256: str  # of the file's bytes

    @property
    def n_choices(self) -> int:
        return len(self.items[0].choices)


# ---- reading a task -------------------------------------------------------------------------------------------------
def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _choices(value: Any, row: int) -> tuple[str, ...]:
    """A list (JSONL), or in a CSV cell a JSON list or choices separated by '|'."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise UploadError(f"row {row}: 'choices' starts like a JSON list but is not one.") from None
        else:
            value = [part.strip() for part in text.split("|")]
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise UploadError(f"row {row}: 'choices' needs a list of at least two choices (in a CSV: a JSON list or "
                          "choices separated by '|').")
    choices = tuple(str(c) for c in value)
    empty = [n + 1 for n, c in enumerate(choices) if not c.strip()]
    if empty:
        raise UploadError(f"row {row}: choice {empty[0]} is empty.")
    return choices


def _answer(value: Any, choices: tuple[str, ...], row: int) -> int:
    """An index (0-based, a number or a digit string) or the text of one of the choices."""
    if isinstance(value, (int, np.integer)) or isinstance(value, float) and value.is_integer():
        index = int(value)
    elif isinstance(value, str) and value.strip() in choices:
        return choices.index(value.strip())
    elif isinstance(value, str) and value.strip().isdigit():
        index = int(value.strip())
    else:
        raise UploadError(f"row {row}: 'answer' {value!r} is not one of its choices; give the index of the right "
                          f"choice (0 to {len(choices) - 1}) or its exact text.")
    if not 0 <= index < len(choices):
        raise UploadError(f"row {row}: 'answer' {index} is outside its {len(choices)} choices (0 to {len(choices) - 1}).")
    return index


def _item(record: dict, row: int) -> ChoiceItem:
    for name in FIELDS:
        if not _present(record.get(name)) or str(record[name]).strip() == "":
            raise UploadError(f"row {row}: '{name}' is missing or empty.")
    choices = _choices(record["choices"], row)
    prefix = record.get("prefix")
    return ChoiceItem(row, str(record["question"]), choices, _answer(record["answer"], choices, row),
                      str(prefix) if _present(prefix) else "")


def read_task(path: str | Path, name: str | None = None, source: str | None = None) -> ChoiceTask:
    """A task from a JSONL, JSON or CSV file; a bad file gets a message naming the field or the row."""
    path = Path(path)
    frame = read_table(path, max_bytes=MAX_TASK_BYTES, max_rows=MAX_ITEMS)
    require_columns(frame, FIELDS, path.name)
    items = tuple(_item(record, n + 1) for n, record in enumerate(frame.to_dict("records")))
    if not items:
        raise UploadError(f"{path.name} has no items.")
    counts = {len(item.choices) for item in items}
    if len(counts) > 1:
        odd = next(item for item in items if len(item.choices) != len(items[0].choices))
        raise UploadError(f"row {odd.row} has {len(odd.choices)} choices but row 1 has {len(items[0].choices)}: every "
                          "row of a task needs the same number of choices.")
    return ChoiceTask(name or path.stem, items, source or f"uploaded file {path.name}",
                      hashlib.sha256(path.read_bytes()).hexdigest())


@dataclass(frozen=True)
class BuiltinTask:
    name: str
    file: str
    description: str


def builtin_tasks() -> list[BuiltinTask]:
    """The team's own small tasks in assets/eval_tasks (written for this app; not a published benchmark)."""
    manifest = json.loads((assets_dir() / TASKS_DIR / "tasks.json").read_text(encoding="utf-8"))
    return [BuiltinTask(**entry) for entry in manifest]


def load_builtin(name: str) -> ChoiceTask:
    task = next((t for t in builtin_tasks() if t.name == name), None)
    if task is None:
        raise UploadError(f"There is no built-in task '{name}'; choose one of {', '.join(t.name for t in builtin_tasks())}.")
    return read_task(assets_dir() / TASKS_DIR / task.file, task.name, f"the team's own task assets/{TASKS_DIR}/{task.file}")


# ---- scoring --------------------------------------------------------------------------------------------------------
def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-evaluation-harness makes them for a causal LM."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if not context:
        return [prefix_token_id(tokenizer)], tokenizer(continuation, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    return context_ids, whole[len(context_ids):]


def item_requests(tokenizer, item: ChoiceItem, fewshot: str = "", delimiter: str = " ",
                  context_limit: int | None = None) -> list[ScoreRequest]:
    """One request per choice; a context longer than the model reads is cut from the left, as lm-eval does."""
    requests = []
    for choice in item.choices:
        context, continuation = encode_pair(tokenizer, fewshot + item.prefix + item.question, delimiter + choice)
        if not continuation:
            raise UploadError(f"row {item.row}: choice {choice!r} adds no token after the question.")
        ids = (context + continuation)[-(context_limit + 1):] if context_limit else context + continuation
        requests.append(ScoreRequest(tuple(ids), max(1, len(ids) - len(continuation))))
    return requests


@dataclass
class ChoiceScores:
    """A task's outcome for one model."""

    acc: Interval
    acc_norm: Interval
    items: pd.DataFrame  # one row per item: what the model preferred, and every choice's log-likelihood

    @property
    def n_items(self) -> int:
        return len(self.items)


def judge(task: ChoiceTask, scores: list[TokenScores], resamples: int = 1000, seed: int = 0) -> ChoiceScores:
    """acc and acc_norm (with intervals) from the per-choice scores, in item order."""
    k = task.n_choices
    rows = []
    for n, item in enumerate(task.items):
        per_choice = scores[n * k:(n + 1) * k]
        lls = np.array([s.total for s in per_choice])
        lengths = np.array([float(len(c)) for c in item.choices])
        pred, pred_norm = int(np.argmax(lls)), int(np.argmax(lls / lengths))
        rows.append({"row": item.row, "question": item.question, "answer": item.answer,
                     "answer_text": item.choices[item.answer], "predicted": pred, "predicted_norm": pred_norm,
                     "correct": pred == item.answer, "correct_norm": pred_norm == item.answer,
                     "answer_is_greedy": per_choice[item.answer].all_greedy,
                     "loglikelihoods": json.dumps([round(float(v), 4) for v in lls])})
    frame = pd.DataFrame(rows)
    return ChoiceScores(bootstrap_mean(frame["correct"].to_numpy(float), resamples, seed),
                        bootstrap_mean(frame["correct_norm"].to_numpy(float), resamples, seed), frame)
