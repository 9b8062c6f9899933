"""The three fine-tuning tasks: how each loads a trainable model, encodes its data and scores the result.

A task object is made per run (it holds that run's label list and baseline perplexities).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

import numpy as np
import torch

from core.common.errors import InputError, check_number
from core.finetune.data import DataSplit, Examples, LabeledTexts, LmTexts, TaggedSentences
from core.finetune.metrics import Metrics, PerplexityMetrics, classification_metrics, entity_metrics
from core.models.heads import HEADS, STANDARD, PooledClassifier, has_custom_head
from core.models.registry import CAUSAL_LM, TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION

IGNORE = -100  # label id the loss skips (prompt tokens, padding, non-first sub-words)
PLAIN_PROMPT = "### Instruction:\n{prompt}\n\n### Response:\n"  # for tokenizers without a chat template


@dataclass
class Hyperparameters:
    learning_rate: float = 5e-5
    epochs: float = 3.0
    batch_size: int = 16
    max_length: int = 128
    weight_decay: float = 0.01
    warmup: float = 0.1  # share of the steps spent warming the learning rate up
    seed: int = 42
    patience: int = 0  # evaluations without improvement before stopping; 0 turns early stopping off
    evals_per_epoch: int = 2
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: str = ""  # comma-separated module names; empty: the architecture's usual attention projections
    head: str = STANDARD  # classification head (core.models.heads.HEADS)
    freeze_encoder: bool = False  # train the classification head only
    compare: bool = False  # also train the plain twin (standard head, no mitigation) on the same data and seed
    distil: bool = False  # train a smaller student of the base model (the teacher) instead of the model itself
    student_layers: int = 0  # transformer layers the student keeps; 0: half of the teacher's
    distil_alpha: float = 0.5  # weight of the teacher's soft targets (KL); the labels' cross-entropy gets the rest
    distil_temperature: float = 2.0  # softens both distributions in the KL term
    augment: bool = False  # counterfactual data augmentation (classification): swapped copies of group words
    reweigh: bool = False  # Kamiran-Calders weights per (group, label) (classification, needs a group column)

    @classmethod
    def from_form(cls, values: Mapping[str, Any]) -> Hyperparameters:
        """Checked, typed hyperparameters from named form or API values (strings, floats from number boxes...)."""
        known = {name: values[name] for name in HYPERPARAMETER_FIELDS if name in values and values[name] is not None}
        for name, (label, low, high, integer) in HYPER_RANGES.items():
            if name in known:
                known[name] = check_number(label, known[name], low, high, integer)
        for flag in BOOLEAN_FIELDS:
            known[flag] = bool(known.get(flag, getattr(cls, flag)))
        known["lora_targets"] = str(known.get("lora_targets") or "")
        known["head"] = str(known.get("head") or STANDARD)
        if known["head"] not in HEADS:
            raise InputError(f"Unknown classification head '{known['head']}'; choose one of {', '.join(HEADS)}.")
        return cls(**known)


# field -> (label, low, high, whole number): what a run accepts
HYPER_RANGES = {
    "learning_rate": ("Learning rate", 1e-9, 1.0, False), "epochs": ("Epochs", 0.01, 1000, False),
    "batch_size": ("Batch size", 1, 1024, True), "max_length": ("Max length", 8, 8192, True),
    "weight_decay": ("Weight decay", 0, 1, False), "warmup": ("Warmup share", 0, 0.9, False),
    "seed": ("Seed", 0, 2**32 - 1, True), "patience": ("Early-stopping patience", 0, 1000, True),
    "evals_per_epoch": ("Evaluations per epoch", 1, 100, True), "lora_r": ("LoRA r", 1, 1024, True),
    "lora_alpha": ("LoRA alpha", 1, 4096, True), "lora_dropout": ("LoRA dropout", 0, 0.9, False),
    "student_layers": ("Student layers", 0, 256, True), "distil_alpha": ("Distillation weight", 0, 1, False),
    "distil_temperature": ("Distillation temperature", 0.5, 20, False),
}
BOOLEAN_FIELDS = ("lora", "freeze_encoder", "compare", "distil", "augment", "reweigh")
HYPERPARAMETER_FIELDS = [f.name for f in fields(Hyperparameters)]


def default_hyperparameters(task: str) -> Hyperparameters:
    """CPU-friendly starting points (the classification ones reach 0.85+ on SST-2 with MiniLM, see bench/)."""
    if task == CAUSAL_LM:
        return Hyperparameters(learning_rate=2e-4, epochs=2, batch_size=8, max_length=128, lora=True)
    if task == TOKEN_CLASSIFICATION:
        return Hyperparameters(learning_rate=1e-4, epochs=5, batch_size=16, max_length=128)
    return Hyperparameters(learning_rate=1e-4, epochs=3, batch_size=32, max_length=64)


def _tokenizer(path: str, **kwargs):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    if tokenizer.pad_token is None:  # GPT-2 / LLaMA tokenizers ship without one; batches need it
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_kwargs() -> dict[str, Any]:
    return {"use_safetensors": True, "dtype": torch.float32}


def _label_maps(labels: list[str]) -> dict[str, Any]:
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {l: i for i, l in enumerate(labels)}, "ignore_mismatched_sizes": True}


def base_label_names(path: str) -> list[str] | None:
    """A classifier's label names in id order; None for a model without named labels (LABEL_0, ...)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    names = [str(config.id2label[i]) for i in range(len(config.id2label or {}))]
    return None if not names or all(n == f"LABEL_{i}" for i, n in enumerate(names)) else names


def matching_labels(names: list[str] | None, classes: list[str], numeric: bool) -> dict[str, str] | None:
    """data label -> base label name: the same names up to case, or (`numeric`) ids 0..n-1 read as positions."""
    if not names:
        return None
    by_lower = {n.lower(): n for n in names}
    if all(c.lower() in by_lower for c in classes):
        return {c: by_lower[c.lower()] for c in classes}
    if numeric and all(c.isdigit() and int(c) < len(names) for c in classes):
        return {c: names[int(c)] for c in classes}
    return None


def predict_in_order(trainer, rows: list[dict]):
    """trainer.predict with the rows in their given order: the length-grouped sampler used for training
    regroups evaluation batches too, and final scores pair each prediction with its example by position."""
    trainer.args.train_sampling_strategy = "sequential"
    return trainer.predict(rows)


class FineTuneTask(ABC):
    registry_task: str
    peft_task: str  # peft TaskType name
    best_metric: str  # key compute_metrics (or the Trainer) reports, picks the best weights
    greater_is_better: bool

    @abstractmethod
    def load(self, path: str, train: Examples) -> tuple[Any, Any]:
        """A fresh trainable (model, tokenizer) from a local folder or hub id."""

    @abstractmethod
    def encode(self, tokenizer, examples: Examples, max_length: int) -> list[dict[str, list[int]]]:
        """Token ids and labels per example, unpadded (the collator pads each batch to its longest row)."""

    @abstractmethod
    def collator(self, tokenizer) -> Callable:
        ...

    def compute_metrics(self) -> Callable | None:
        return None

    def before_training(self, model, tokenizer, sets: dict[str, Examples], max_length: int) -> None:
        """Measure whatever the result compares against the untrained model."""

    def align(self, path: str, data: DataSplit, required: bool) -> DataSplit:
        """The data with its labels named as the base model names them, where they correspond (a distillation
        teacher must already classify the data's labels: `required`)."""
        return data

    @abstractmethod
    def evaluate(self, trainer, tokenizer, examples: Examples, encoded: list[dict], which: str, max_length: int) -> Metrics:
        ...


class ClassificationTask(FineTuneTask):
    registry_task, peft_task = TEXT_CLASSIFICATION, "SEQ_CLS"
    best_metric, greater_is_better = "f1", True

    head = STANDARD  # set per run from the hyperparameters
    base_labels: list[str] | None = None  # the base model's labels in its own order, when the data uses them

    def align(self, path: str, data: DataSplit, required: bool) -> DataSplit:
        names = base_label_names(path)
        renames = matching_labels(names, data.train.classes, numeric=required)
        if renames is None:
            if required:
                raise InputError(f"The teacher classifies {', '.join(names or ['no named labels'])}; the data's labels "
                                 f"are {', '.join(data.train.classes)}. Distil a classifier trained for these labels "
                                 "(fine-tune one first), or name the labels as the teacher does.")
            return data
        self.base_labels = names
        return DataSplit(*(part.renamed(renames) if part is not None else None
                           for part in (data.train, data.eval, data.extra_eval)))

    def load(self, path: str, train: LabeledTexts):
        from transformers import AutoModel, AutoModelForSequenceClassification

        # the base model's own label order keeps its trained head meaningful (the student starts from it)
        self.labels = self.base_labels or train.classes
        tokenizer = _tokenizer(path)
        if has_custom_head(path):
            return PooledClassifier.from_folder(path, **_load_kwargs()).train(), tokenizer
        if self.head != STANDARD:
            encoder = AutoModel.from_pretrained(path, **_load_kwargs())
            return PooledClassifier(encoder, self.head, dict(enumerate(self.labels))), tokenizer
        model = AutoModelForSequenceClassification.from_pretrained(path, **_label_maps(self.labels), **_load_kwargs())
        model.config.pad_token_id = tokenizer.pad_token_id  # decoders classify from the last non-pad token
        return model, tokenizer

    def encode(self, tokenizer, examples: LabeledTexts, max_length: int):
        ids = {l: i for i, l in enumerate(self.labels)}
        enc = tokenizer(examples.texts, truncation=True, max_length=max_length)
        return [{"input_ids": row, "attention_mask": mask, "labels": ids[label]}
                for row, mask, label in zip(enc["input_ids"], enc["attention_mask"], examples.labels)]

    def collator(self, tokenizer):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def compute_metrics(self):
        def scores(prediction) -> dict[str, float]:
            preds = np.asarray(prediction.predictions).argmax(-1)
            metrics = classification_metrics([self.labels[i] for i in prediction.label_ids],
                                             [self.labels[i] for i in preds], self.labels)
            return {"accuracy": metrics.accuracy, "f1": metrics.f1}

        return scores

    def evaluate(self, trainer, tokenizer, examples: LabeledTexts, encoded, which, max_length):
        preds = np.asarray(predict_in_order(trainer, encoded).predictions).argmax(-1)
        return classification_metrics(examples.labels, [self.labels[i] for i in preds], self.labels)


def render_pair(tokenizer, prompt: str, response: str) -> tuple[str, str]:
    """(prompt part, whole example) through the tokenizer's chat template, or a plain instruction format."""
    if getattr(tokenizer, "chat_template", None):
        user = [{"role": "user", "content": prompt}]
        head = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        whole = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=False)
        return head, whole
    head = PLAIN_PROMPT.format(prompt=prompt)
    return head, head + response + (tokenizer.eos_token or "")


class CausalLmTask(FineTuneTask):
    registry_task, peft_task = CAUSAL_LM, "CAUSAL_LM"
    best_metric, greater_is_better = "loss", False

    def __init__(self) -> None:
        self.before: dict[str, float] = {}

    def load(self, path: str, train: LmTexts):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(path, **_load_kwargs()), _tokenizer(path)

    def _pieces(self, tokenizer, examples: LmTexts) -> list[tuple[str, str]]:
        """(part the loss skips, whole text) per example: prompts are context, only responses are learned."""
        if examples.prompts is None:
            return [("", text) for text in examples.texts]
        return [render_pair(tokenizer, p, r) for p, r in zip(examples.prompts, examples.texts)]

    def text(self, tokenizer, examples: LmTexts) -> str:
        """All examples as one text, for perplexity."""
        return "\n\n".join(whole for _, whole in self._pieces(tokenizer, examples))

    def encode(self, tokenizer, examples: LmTexts, max_length: int):
        templated = examples.prompts is not None and bool(getattr(tokenizer, "chat_template", None))
        rows = []
        for head, whole in self._pieces(tokenizer, examples):
            # a chat template writes its own special tokens; plain text gets the tokenizer's (e.g. LLaMA's BOS)
            ids = tokenizer(whole, truncation=True, max_length=max_length, add_special_tokens=not templated)["input_ids"]
            skip = len(tokenizer(head, add_special_tokens=not templated)["input_ids"]) if head else 0
            labels = [IGNORE] * min(skip, len(ids)) + ids[skip:]
            rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
        return rows

    def collator(self, tokenizer):
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE, padding=True)

    def _perplexity(self, model, tokenizer, examples: LmTexts, max_length: int):
        from core.evaluate.perplexity import perplexity

        was_training = model.training
        model.eval()
        result = perplexity(model, tokenizer, self.text(tokenizer, examples), max_length=max_length,
                            stride=max(1, max_length // 2))
        model.train(was_training)
        return result

    def before_training(self, model, tokenizer, sets, max_length):
        self.before = {which: self._perplexity(model, tokenizer, ex, max_length).perplexity for which, ex in sets.items()}

    def evaluate(self, trainer, tokenizer, examples: LmTexts, encoded, which, max_length):
        after = self._perplexity(trainer.model, tokenizer, examples, max_length)
        return PerplexityMetrics(self.before[which], after.perplexity, after.tokens)


class TokenClassificationTask(FineTuneTask):
    registry_task, peft_task = TOKEN_CLASSIFICATION, "TOKEN_CLS"
    best_metric, greater_is_better = "f1", True

    def load(self, path: str, train: TaggedSentences):
        from transformers import AutoConfig, AutoModelForTokenClassification

        self.labels = train.tag_set
        # byte-level BPE tokenizers (GPT-2, RoBERTa) need a leading space to encode pre-split words
        byte_level = AutoConfig.from_pretrained(path).model_type in ("gpt2", "roberta", "deberta", "longformer")
        tokenizer = _tokenizer(path, **({"add_prefix_space": True} if byte_level else {}))
        if not tokenizer.is_fast:
            raise InputError(f"{path} has no fast tokenizer; token classification needs one to align words and tags.")
        model = AutoModelForTokenClassification.from_pretrained(path, **_label_maps(self.labels), **_load_kwargs())
        model.config.pad_token_id = tokenizer.pad_token_id
        return model, tokenizer

    def encode(self, tokenizer, examples: TaggedSentences, max_length: int):
        ids = {l: i for i, l in enumerate(self.labels)}
        enc = tokenizer(examples.tokens, is_split_into_words=True, truncation=True, max_length=max_length)
        rows = []
        for n, tags in enumerate(examples.tags):
            seen, labels = set(), []
            for word in enc.word_ids(n):
                # only a word's first sub-token carries its tag; special tokens and continuations are skipped
                labels.append(IGNORE if word is None or word in seen else ids[tags[word]])
                seen.add(word)
            rows.append({"input_ids": enc["input_ids"][n], "attention_mask": enc["attention_mask"][n], "labels": labels})
        return rows

    def collator(self, tokenizer):
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE)

    def _word_tags(self, predictions, label_ids) -> tuple[list[list[str]], list[list[str]]]:
        """(gold, predicted) tags of the words that survived truncation, read at each word's first sub-token."""
        preds = np.asarray(predictions).argmax(-1)
        gold, pred = [], []
        for p_row, l_row in zip(preds, np.asarray(label_ids)):
            keep = l_row != IGNORE
            gold.append([self.labels[i] for i in l_row[keep]])
            pred.append([self.labels[i] for i in p_row[keep]])
        return gold, pred

    def compute_metrics(self):
        def scores(prediction) -> dict[str, float]:
            metrics = entity_metrics(*self._word_tags(prediction.predictions, prediction.label_ids))
            return {"f1": metrics.f1, "token_accuracy": metrics.token_accuracy}

        return scores

    def evaluate(self, trainer, tokenizer, examples: TaggedSentences, encoded, which, max_length):
        out = predict_in_order(trainer, encoded)
        _, pred = self._word_tags(out.predictions, out.label_ids)
        # words cut off by max_length were never predicted: they count as 'O', so their entities are misses
        pred = [p + ["O"] * (len(g) - len(p)) for p, g in zip(pred, examples.tags)]
        return entity_metrics(examples.tags, pred)


TASKS: dict[str, type[FineTuneTask]] = {
    TEXT_CLASSIFICATION: ClassificationTask,
    CAUSAL_LM: CausalLmTask,
    TOKEN_CLASSIFICATION: TokenClassificationTask,
}


def make_task(task: str) -> FineTuneTask:
    if task not in TASKS:
        raise ValueError(f"unknown fine-tuning task {task!r}; choose from {', '.join(TASKS)}")
    return TASKS[task]()
