"""Training data for fine-tuning: read uploads, map columns, validate, split.

Every problem a person can fix (a missing column, one class only, empty rows, a bad CoNLL line)
is raised as `UploadError` with a message that says what is wrong and where.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.common.errors import check_number
from core.common.uploads import MAX_UPLOAD_BYTES, UploadError, read_table, read_text_file

CONLL_SUFFIXES = (".txt", ".conll", ".iob", ".bio")
_TAG = re.compile(r"^(O|[BI]-\S+)$")
# Column names each role is recognised by, best first; an id-like column is never guessed for any role.
TEXT_NAMES = ("text", "sentence", "review", "comment", "content", "body", "response", "document")
LABEL_NAMES = ("label", "labels", "sentiment", "class", "category", "target")
PROMPT_NAMES = ("prompt", "instruction", "question")
_ID_LIKE = re.compile(r"^(id|idx|index|key|uuid|guid|row|row[ _-]?(id|number)|.*[ _-](id|idx)|unnamed: ?\d+)$", re.I)


@dataclass(frozen=True)
class LabeledTexts:
    """Texts with one class label each (text classification)."""

    texts: list[str]
    labels: list[str]
    groups: list[str] | None = None  # a `group` column, when the data has one (for reweighing)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, rows) -> LabeledTexts:
        return LabeledTexts([self.texts[i] for i in rows], [self.labels[i] for i in rows],
                            None if self.groups is None else [self.groups[i] for i in rows])

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))

    def renamed(self, names: dict[str, str]) -> LabeledTexts:
        return LabeledTexts(self.texts, [names.get(label, label) for label in self.labels], self.groups)


@dataclass(frozen=True)
class LmTexts:
    """Texts for causal LM training; with `prompts`, each text is the response to its prompt."""

    texts: list[str]
    prompts: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, rows) -> LmTexts:
        return LmTexts([self.texts[i] for i in rows], None if self.prompts is None else [self.prompts[i] for i in rows])


@dataclass(frozen=True)
class TaggedSentences:
    """Pre-split sentences with one IOB tag per token (token classification / NER)."""

    tokens: list[list[str]]
    tags: list[list[str]]

    def __len__(self) -> int:
        return len(self.tokens)

    def subset(self, rows) -> TaggedSentences:
        return TaggedSentences([self.tokens[i] for i in rows], [self.tags[i] for i in rows])

    @property
    def tag_set(self) -> list[str]:
        """'O' first, then the entity tags grouped by type (B- before I-)."""
        tags = {t for sent in self.tags for t in sent} - {"O"}
        return ["O"] + sorted(tags, key=lambda t: (t[2:], t[0]))


Examples = LabeledTexts | LmTexts | TaggedSentences


@dataclass(frozen=True)
class ColumnMapping:
    """Which columns hold what; `prompt` set means prompt/response pairs for causal LM training."""

    text: str = "text"
    label: str = "label"
    prompt: str | None = None
    group: str = "group"  # read when present (reweighing needs it)


@dataclass
class DataSplit:
    train: Examples
    eval: Examples
    extra_eval: Examples | None = None  # out-of-domain (or held-out test) file
    sampled_from: int | None = None  # examples in the file, when only a sample of them is used

    @property
    def data_hash(self) -> str:
        """sha256 of every example, so a card says exactly which data trained the model."""
        digest = hashlib.sha256()
        for part in (self.train, self.eval, self.extra_eval):
            digest.update(json.dumps(part.__dict__ if part is not None else None, sort_keys=True).encode())
        return digest.hexdigest()

    def summary(self) -> str:
        parts = [f"{len(self.train):,} training and {len(self.eval):,} validation examples"]
        if self.sampled_from is not None:
            parts[0] += (f" (a sample of the file's {self.sampled_from:,}: set 'Examples to use' to 0 to train on "
                         "all of them)")
        if self.extra_eval is not None:
            parts.append(f"{len(self.extra_eval):,} out-of-domain examples")
        if isinstance(self.train, LabeledTexts):
            counts = pd.Series(self.train.labels).value_counts()
            parts.append("classes: " + ", ".join(f"{k} ({v})" for k, v in counts.items()))
        elif isinstance(self.train, TaggedSentences):
            parts.append("tags: " + ", ".join(self.train.tag_set))
        return "; ".join(parts) + "."


@dataclass(frozen=True)
class ColumnGuess:
    """The columns a file's names suggest for each role; None where nothing fits (the user must pick)."""

    text: str | None
    label: str | None
    prompt: str | None


def is_id_like(name: str) -> bool:
    return bool(_ID_LIKE.match(name.strip()))


def guess_columns(names: list[str]) -> ColumnGuess:
    """Columns named like a role first; else the text is the first column left that is not an id, and the label
    the only one left after that. A file of `id,comment_body` gets comment_body as text and no label."""
    lowered = {n.lower(): n for n in names}

    def named(wanted: tuple[str, ...]) -> str | None:
        return next((lowered[w] for w in wanted if w in lowered), None)

    text, label, prompt = named(TEXT_NAMES), named(LABEL_NAMES), named(PROMPT_NAMES)
    left = [n for n in names if not is_id_like(n) and n not in (text, label, prompt)]
    if text is None and left:
        text = left.pop(0)
    if label is None and len(left) == 1:
        label = left[0]
    return ColumnGuess(text, label, prompt)


def preview(path: str | Path, rows: int = 8, max_bytes: int = MAX_UPLOAD_BYTES) -> pd.DataFrame:
    """The first rows of an upload as a table; CoNLL files show token / tag columns."""
    if is_conll(path, max_bytes):
        sentences = read_conll(path, max_bytes, require_entities=False)
        flat = [(i + 1, tok, tag) for i, (toks, tags) in enumerate(zip(sentences.tokens, sentences.tags))
                for tok, tag in zip(toks, tags)]
        return pd.DataFrame(flat[: rows * 4], columns=["sentence", "token", "tag"])
    return read_table(path, max_bytes).head(rows)


def columns(path: str | Path, max_bytes: int = MAX_UPLOAD_BYTES) -> list[str]:
    return [] if is_conll(path, max_bytes) else [str(c) for c in read_table(path, max_bytes).columns]


def is_conll(path: str | Path, max_bytes: int = MAX_UPLOAD_BYTES) -> bool:
    """A .txt/.conll file whose non-blank lines all end in an IOB tag."""
    if Path(path).suffix.lower() not in CONLL_SUFFIXES:
        return False
    lines = [l.split() for l in read_text_file(path, max_bytes).splitlines()[:200] if l.strip()]
    lines = [l for l in lines if l[0] != "-DOCSTART-"]
    return bool(lines) and all(len(l) >= 2 and _TAG.match(l[-1]) for l in lines)


def _empty_rows(values: pd.Series) -> list[int]:
    """1-based data-row numbers whose value is blank."""
    blank = values.isna() | (values.astype(str).str.strip() == "")
    return [int(i) + 1 for i in np.flatnonzero(blank.to_numpy())]


def _require_filled(frame: pd.DataFrame, column: str, name: str) -> list[str]:
    empty = _empty_rows(frame[column])
    if empty:
        shown = ", ".join(map(str, empty[:5])) + (" ..." if len(empty) > 5 else "")
        raise UploadError(f"{name}: {len(empty)} row(s) have an empty '{column}' (data rows {shown}); "
                          "fill them in or delete them.")
    return frame[column].astype(str).str.strip().tolist()


def require_roles(frame: pd.DataFrame, roles: dict[str, str], name: str) -> None:
    """Refuse, before anything else is read, a file that lacks a column a role needs: role -> column name."""
    missing = {role: column for role, column in roles.items() if column not in frame.columns}
    if missing:
        which = " or ".join(f"'{column}' (the {role})" for role, column in missing.items())
        raise UploadError(f"{name} has no column {which}; its columns are "
                          f"{', '.join(repr(str(c)) for c in frame.columns) or 'none'}. Pick the "
                          f"{' and '.join(missing)} column{'s' if len(missing) > 1 else ''} in the form, or rename "
                          "them in the file.")
    columns = list(roles.values())
    shared = next((c for c in columns if columns.count(c) > 1), None)
    if shared is not None:
        both = " and ".join(role for role, c in roles.items() if c == shared)
        raise UploadError(f"{name}: the {both} are both the column '{shared}'; pick a different column for each.")


def read_labeled(path: str | Path, mapping: ColumnMapping, max_bytes: int = MAX_UPLOAD_BYTES,
                 min_classes: int = 2) -> LabeledTexts:
    name = Path(path).name
    frame = read_table(path, max_bytes)
    require_roles(frame, {"text": mapping.text, "label": mapping.label}, name)
    groups = _require_filled(frame, mapping.group, name) if mapping.group in frame.columns else None
    data = LabeledTexts(_require_filled(frame, mapping.text, name), _require_filled(frame, mapping.label, name), groups)
    if len(data.classes) < min_classes:
        raise UploadError(f"{name}: column '{mapping.label}' has only {len(data.classes)} class "
                          f"({', '.join(data.classes)}); a classifier needs at least two.")
    if min_classes > 1 and len(data) > 2 and len(data.classes) == len(data):
        raise UploadError(f"{name}: column '{mapping.label}' has a different value in every row, like an id: a "
                          "classifier learns labels that many examples share. Pick the column that holds the labels.")
    return data


def read_lm(path: str | Path, mapping: ColumnMapping, max_bytes: int = MAX_UPLOAD_BYTES) -> LmTexts:
    """Plain texts (a TXT file is one example per non-empty line) or prompt/response pairs."""
    name = Path(path).name
    frame = read_table(path, max_bytes, txt_column=mapping.text)
    if mapping.prompt:
        require_roles(frame, {"prompt": mapping.prompt, "response": mapping.text}, name)
        return LmTexts(_require_filled(frame, mapping.text, name), _require_filled(frame, mapping.prompt, name))
    require_roles(frame, {"text": mapping.text}, name)
    return LmTexts(_require_filled(frame, mapping.text, name))


def read_conll(path: str | Path, max_bytes: int = MAX_UPLOAD_BYTES, require_entities: bool = True) -> TaggedSentences:
    """`token TAG` per line (extra middle columns ignored), blank line between sentences, -DOCSTART- skipped."""
    name = Path(path).name
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    sent_toks: list[str] = []
    sent_tags: list[str] = []
    for number, line in enumerate(read_text_file(path, max_bytes).splitlines() + [""], start=1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if sent_toks:
                tokens.append(sent_toks)
                tags.append(sent_tags)
                sent_toks, sent_tags = [], []
            continue
        if len(fields) < 2:
            raise UploadError(f"{name} line {number}: expected 'token TAG', found '{line.strip()[:60]}'.")
        if not _TAG.match(fields[-1]):
            raise UploadError(f"{name} line {number}: tag '{fields[-1][:30]}' is not O, B-TYPE or I-TYPE (IOB tags).")
        sent_toks.append(fields[0])
        sent_tags.append(fields[-1])
    data = TaggedSentences(tokens, tags)
    if not tokens:
        raise UploadError(f"{name} has no 'token TAG' lines.")
    if require_entities and len(data.tag_set) < 2:
        raise UploadError(f"{name} has only 'O' tags: there are no entities to learn.")
    return data


def read_examples(path: str | Path, task: str, mapping: ColumnMapping, max_bytes: int = MAX_UPLOAD_BYTES,
                  evaluation: bool = False) -> Examples:
    """The examples of one upload for `task` (a core.models.registry task constant); evaluation files may hold one class."""
    from core.models.registry import CAUSAL_LM, TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION

    if task == TEXT_CLASSIFICATION:
        return read_labeled(path, mapping, max_bytes, min_classes=1 if evaluation else 2)
    if task == CAUSAL_LM:
        return read_lm(path, mapping, max_bytes)
    if task == TOKEN_CLASSIFICATION:
        return read_conll(path, max_bytes, require_entities=not evaluation)
    raise ValueError(f"unknown fine-tuning task {task!r}")


def sample(examples: Examples, count: int, seed: int = 42) -> Examples:
    """`count` examples drawn at random, in file order; stratified by class for labeled texts (a quick run keeps
    every class in its share)."""
    from sklearn.model_selection import train_test_split

    if count >= len(examples):
        return examples
    rows = np.arange(len(examples))
    stratify = examples.labels if isinstance(examples, LabeledTexts) else None
    if stratify is not None and (pd.Series(stratify).value_counts().min() < 2 or count < len(set(stratify))):
        stratify = None  # too few of some class to stratify: split() names the problem
    kept, _ = train_test_split(rows, train_size=count, random_state=seed, stratify=stratify)
    return examples.subset(sorted(kept))


def split(examples: Examples, eval_percent: float, seed: int = 42) -> tuple[Examples, Examples]:
    """Random train/validation split; stratified by class for labeled texts so every class is in both."""
    from sklearn.model_selection import train_test_split

    if not 0 < eval_percent < 100:
        raise UploadError("The validation share must be between 1 and 99 percent (or upload a validation file).")
    rows = np.arange(len(examples))
    n_eval = max(1, round(len(examples) * eval_percent / 100))
    stratify = None
    if isinstance(examples, LabeledTexts):
        counts = pd.Series(examples.labels).value_counts()
        if counts.min() < 2:
            rare = ", ".join(f"'{c}'" for c in counts[counts < 2].index[:5])
            raise UploadError(f"Class {rare} has only one example: a stratified validation split needs at least two "
                              "per class. Add examples or upload a separate validation file.")
        n_eval = min(max(n_eval, len(counts)), len(examples) - len(counts))
        stratify = examples.labels
    if n_eval >= len(examples):
        raise UploadError(f"{len(examples)} example(s) are too few to split off {eval_percent:g}% for validation.")
    train_rows, eval_rows = train_test_split(rows, test_size=n_eval, random_state=seed, stratify=stratify)
    return examples.subset(sorted(train_rows)), examples.subset(sorted(eval_rows))


def check_eval_labels(train: Examples, other: Examples, what: str) -> None:
    """Refuse evaluation labels or tags the model cannot predict."""
    if isinstance(train, LabeledTexts) and isinstance(other, LabeledTexts):
        unknown = sorted(set(other.classes) - set(train.classes))
        if unknown:
            raise UploadError(f"The {what} file has labels the training data lacks: {', '.join(unknown[:5])}.")
    if isinstance(train, TaggedSentences) and isinstance(other, TaggedSentences):
        unknown = sorted(set(other.tag_set) - set(train.tag_set))
        if unknown:
            raise UploadError(f"The {what} file has tags the training data lacks: {', '.join(unknown[:5])}.")


def prepare(task: str, train_path: str | Path, mapping: ColumnMapping, eval_percent: float = 10, eval_path=None,
            extra_eval_path=None, seed: int = 42, max_bytes: int = MAX_UPLOAD_BYTES, max_examples: int = 0) -> DataSplit:
    """Read and validate everything before any training: the training file (a sample of `max_examples` of it, when
    that is above 0 and below its size), then a validation file or split."""
    examples = read_examples(train_path, task, mapping, max_bytes)
    in_file = len(examples)
    if max_examples:
        examples = sample(examples, max_examples, seed)
    if eval_path:
        train, evaluation = examples, read_examples(eval_path, task, mapping, max_bytes, evaluation=True)
        check_eval_labels(train, evaluation, "validation")
    else:
        train, evaluation = split(examples, eval_percent, seed)
    extra = read_examples(extra_eval_path, task, mapping, max_bytes, evaluation=True) if extra_eval_path else None
    if extra is not None:
        check_eval_labels(train, extra, "out-of-domain")
    return DataSplit(train, evaluation, extra, in_file if len(examples) < in_file else None)


@dataclass(frozen=True)
class DataRequest:
    """Where a run's data comes from and how to read it, as a user fills in the form (or an API call names it)."""

    task: str
    train_file: str | None
    text_col: str | None = "text"
    label_col: str | None = "label"
    prompt_col: str | None = None  # set: prompt/response pairs (causal LM)
    eval_percent: float = 10
    eval_file: str | None = None
    ood_file: str | None = None
    max_examples: int = 0  # a random sample of this many of the file's examples (0: all), for a quick run

    def prepare(self, seed: int = 42) -> DataSplit:
        if not self.train_file:
            raise UploadError("Upload a training file first (or load the example).")
        percent = check_number("Validation split (%)", self.eval_percent, 1, 99)
        count = check_number("Examples to use", self.max_examples or 0, 0, None, integer=True)
        if 0 < count < 4:
            raise UploadError("Examples to use: at least 4 (training and validation both need some), or 0 for all.")
        mapping = ColumnMapping(text=self.text_col or "text", label=self.label_col or "label", prompt=self.prompt_col)
        return prepare(self.task, self.train_file, mapping, percent, self.eval_file, self.ood_file, seed,
                       max_examples=count)
