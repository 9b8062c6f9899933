"""One fine-tuning run: load a fresh copy of the base model, train with transformers' Trainer, score, save.

The run reports through TrainingProgress and obeys a StopFlag, so it can live on a background thread
(core.finetune.jobs) while a UI polls it.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from core.common.errors import InputError
from core.common.stopping import StopFlag
from core.finetune.data import DataSplit, Examples
from core.finetune.metrics import Metrics
from core.finetune.progress import BestWeightsCallback, LiveCallback, TrainingProgress
from core.finetune.tasks import (
    CausalLmTask,
    ClassificationTask,
    FineTuneTask,
    Hyperparameters,
    TokenClassificationTask,
    make_task,
)
from core.models.heads import STANDARD
from core.models.registry import OFFLINE_CLASSIFIER, TEXT_CLASSIFICATION
from core.models.store import ModelCard, ModelStore

# Architectures whose usual LoRA targets peft does not list.
EXTRA_LORA_TARGETS = {"phi3": ["qkv_proj", "o_proj"], "distilbert": ["q_lin", "v_lin"]}


@dataclass(frozen=True)
class FineTuneSpec:
    task: str  # core.models.registry TEXT_CLASSIFICATION | CAUSAL_LM | TOKEN_CLASSIFICATION
    base_model: str  # hub id, offline id or local folder
    data: DataSplit
    hyper: Hyperparameters
    name: str = ""  # model store folder name; empty: derived from the base model

    def store_name(self) -> str:
        return self.name.strip() or f"{Path(self.base_model).name}-{self.task}"

    def twin(self) -> FineTuneSpec:
        """The plain run to compare with: the standard head, no mitigation, no comparison of its own; a student
        trained on the labels alone (no teacher term) when distilling."""
        plain = replace(self.hyper, head=STANDARD, freeze_encoder=False, augment=False, reweigh=False, compare=False,
                        distil_alpha=0.0)
        return replace(self, hyper=plain, name=f"{self.store_name()}-plain")

    def describe(self) -> str:
        """What sets this run apart, in a few words (a row name in comparison tables)."""
        h = self.hyper
        parts = [h.head + (", frozen encoder" if h.freeze_encoder else "")] if self.task == TEXT_CLASSIFICATION else []
        if h.distil:
            parts.append(f"student, teacher weight {h.distil_alpha:g}" if h.distil_alpha else "student, labels only")
        parts += ["augmented"] * h.augment + ["reweighed"] * h.reweigh
        return ", ".join(parts) or "plain"


@dataclass(frozen=True)
class ModelFacts:
    """One row of a comparison table: a model's size, speed and score on the validation data."""

    name: str
    params: int
    trained_params: int
    size_mb: float
    speed: float
    speed_unit: str  # "texts/s" or "tokens/s"
    score_name: str
    score: float
    train_seconds: float | None = None


@dataclass(frozen=True)
class FineTuneResult:
    spec: FineTuneSpec
    folder: Path  # where the model store keeps the trained model
    metrics: Metrics  # on the validation data
    extra_metrics: Metrics | None  # on the out-of-domain file, when given
    trainable_params: int
    total_params: int
    steps: int
    train_seconds: float
    stopped: str  # why training ended before its last step (the user's Stop, the time budget), or ""
    early_stopped: bool  # patience ran out
    best_step: int | None  # step whose weights were kept (None: the last)
    card: ModelCard
    notes: tuple[str, ...] = ()  # what the run did to the data or the model (augmentation, student layers...)
    table: tuple[ModelFacts, ...] = ()  # teacher vs student, or this run vs its plain twin
    terms: tuple[str, ...] = ()  # extra loss curves logged (distillation: kd_loss, ce_loss)


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def apply_lora(model, hyper: Hyperparameters, task: FineTuneTask):
    """Wrap `model` with a LoRA adapter; GPT-2's Conv1D layers store weights transposed (fan_in_fan_out)."""
    from peft import LoraConfig, TaskType, get_peft_model
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    family = model.config.model_type
    targets = [t.strip() for t in hyper.lora_targets.split(",") if t.strip()]
    targets = targets or PEFT_TARGETS.get(family) or EXTRA_LORA_TARGETS.get(family)
    if not targets:
        raise InputError(f"No default LoRA target modules for '{family}'; name them (e.g. q_proj,v_proj).")
    config = LoraConfig(task_type=TaskType[task.peft_task], r=hyper.lora_r, lora_alpha=hyper.lora_alpha,
                        lora_dropout=hyper.lora_dropout, target_modules=targets, fan_in_fan_out=family == "gpt2")
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # e.g. a typed module name that the model lacks
        raise InputError(f"LoRA could not be applied to {family}: {str(err).splitlines()[0]}") from err


def training_arguments(hyper: Hyperparameters, task: FineTuneTask, n_train: int, out_dir: str):
    import torch
    from transformers import TrainingArguments

    steps_per_epoch = max(1, math.ceil(n_train / hyper.batch_size))
    return TrainingArguments(
        output_dir=out_dir, report_to=[], disable_tqdm=True, save_strategy="no",
        learning_rate=hyper.learning_rate, num_train_epochs=hyper.epochs, weight_decay=hyper.weight_decay,
        warmup_steps=hyper.warmup, per_device_train_batch_size=hyper.batch_size,
        per_device_eval_batch_size=hyper.batch_size * 2, seed=hyper.seed, data_seed=hyper.seed,
        eval_strategy="steps", eval_steps=max(1, steps_per_epoch // max(1, hyper.evals_per_epoch)),
        logging_steps=max(1, steps_per_epoch // 10),
        # EarlyStoppingCallback reads these; BestWeightsCallback keeps the weights (no checkpoints on disk)
        metric_for_best_model=task.best_metric, greater_is_better=task.greater_is_better,
        # similar lengths in a batch: less padding, the main cost of dynamic padding on a CPU
        train_sampling_strategy="group_by_length",
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        dataloader_pin_memory=torch.cuda.is_available(),
    )


def save_to_store(store: ModelStore, spec: FineTuneSpec, task: FineTuneTask, model, tokenizer,
                  metrics: dict[str, Metrics], facts: dict, notes: str) -> tuple[Path, ModelCard]:
    """safetensors weights, tokenizer and a card (data hash, hyperparameters, metrics) in a new store folder."""
    folder = store.new_folder(spec.store_name())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    card_metrics = metrics["eval"].summary()
    if "extra" in metrics:
        card_metrics |= {f"ood_{k}": v for k, v in metrics["extra"].summary().items()}
    card = ModelCard(name=folder.name, task=task.registry_task, base_model=spec.base_model,
                     data_hash=spec.data.data_hash,
                     hyperparameters=asdict(spec.hyper) | facts | {"train_examples": len(spec.data.train)},
                     metrics={k: round(v, 4) for k, v in card_metrics.items()}, notes=notes)
    store.write_card(folder, card)
    return folder, card


def run_finetune(spec: FineTuneSpec, store: ModelStore, progress: TrainingProgress | None = None,
                 stop: StopFlag | None = None, base_path: str | None = None) -> FineTuneResult:
    """Train, evaluate (validation and out-of-domain) and save to the store; with `compare`, the plain twin too.

    `base_path` is the folder or hub id to load (ModelManager.resolve(...).path; default: the spec's base model),
    so training always starts from a fresh copy and never touches a model other tabs are using.
    """
    progress = progress or TrainingProgress()
    stop = stop or StopFlag()
    result = _run(spec, store, progress, stop, base_path)
    if not spec.hyper.compare or stop.stopped:
        return result
    progress.set_phase("Training the plain twin to compare with (standard head, no mitigation)")
    twin = _run(spec.twin(), store, TrainingProgress(), stop, base_path)
    return replace(result, table=(*result.table[:-1], _facts(result, "this run"), _facts(twin, "plain twin")))


def _facts(result: FineTuneResult, which: str) -> ModelFacts:
    return replace(result.table[-1], name=f"{which}: {result.spec.describe()}")


def check_options(hyper: Hyperparameters, task: FineTuneTask) -> None:
    """Refuse combinations that cannot train as asked, before anything loads."""
    classifying = isinstance(task, ClassificationTask)
    if (hyper.augment or hyper.reweigh) and not classifying:
        raise InputError("Counterfactual augmentation and reweighing are for text classification.")
    if (hyper.head != STANDARD or hyper.freeze_encoder) and not classifying:
        raise InputError("Classification heads and a frozen encoder are for text classification.")
    if hyper.distil and hyper.lora:
        raise InputError("Distillation trains the whole student: turn LoRA off.")
    if hyper.distil and hyper.head != STANDARD:
        raise InputError("The student keeps its teacher's head: choose the standard head to distil.")
    if hyper.lora and hyper.head != STANDARD:
        raise InputError("LoRA trains the standard head only: turn LoRA off for a custom head (or freeze the encoder).")
    if hyper.distil and isinstance(task, TokenClassificationTask):
        raise InputError("Distillation is for text classifiers and language models.")


def _prepare_training(data: DataSplit, hyper: Hyperparameters) -> tuple[Examples, list[float] | None, list[str]]:
    """The training examples after mitigation, their weights, and notes saying what was done."""
    from core.finetune.mitigation import augment, reweighing

    train, notes, weights = data.train, [], None
    if hyper.augment:
        augmented = augment(train)
        train = augmented.data
        notes.append(augmented.message)
    if hyper.reweigh:
        weights = reweighing(train)
        notes.append(f"Reweighing by group: weights from {min(weights):.2f} to {max(weights):.2f}.")
    return train, weights, notes


def teacher_overlap_note(teacher_id: str, evaluation) -> list[str]:
    """A note when the packaged classifier, as teacher, trained on validation texts: its score is then optimistic."""
    if teacher_id != OFFLINE_CLASSIFIER:
        return []
    from core.classify.default_classifier import training_texts

    seen = len(set(evaluation.texts) & training_texts())
    return [f"The teacher learned from {seen:,} of these {len(evaluation):,} validation texts (the packaged classifier "
            "was trained on the example reviews), so its score here is optimistic; for a fair comparison, validate "
            "on texts it has not seen (a validation file)."] if seen else []


def _student(teacher, hyper: Hyperparameters, notes: list[str]):
    from core.finetune.distil import make_student

    teacher_layers = teacher.config.num_hidden_layers
    student = make_student(teacher, hyper.student_layers or max(1, teacher_layers // 2))
    notes.append(f"Student: {student.config.num_hidden_layers} of the teacher's {teacher_layers} layers, each "
                 f"initialised from the teacher's; loss = {hyper.distil_alpha:g} x KL (T = "
                 f"{hyper.distil_temperature:g}) + {1 - hyper.distil_alpha:g} x cross-entropy.")
    return student


def _run(spec: FineTuneSpec, store: ModelStore, progress: TrainingProgress, stop: StopFlag,
         base_path: str | None) -> FineTuneResult:
    from transformers import EarlyStoppingCallback, PrinterCallback, set_seed

    from core.finetune.distil import PlaygroundTrainer, with_weights
    from core.models.heads import freeze_encoder

    hyper, path = spec.hyper, base_path or spec.base_model
    task = make_task(spec.task)
    task.head = hyper.head
    check_options(hyper, task)
    data = task.align(path, spec.data, required=hyper.distil)
    train, weights, notes = _prepare_training(data, hyper)
    set_seed(hyper.seed)
    progress.set_phase(f"Loading {spec.base_model}")
    model, tokenizer = task.load(path, train)
    sets = {"eval": data.eval} | ({"extra": data.extra_eval} if data.extra_eval is not None else {})
    progress.set_phase("Tokenizing")
    encoded = {which: task.encode(tokenizer, ex, hyper.max_length) for which, ex in sets.items()}
    train_rows = task.encode(tokenizer, train, hyper.max_length)
    for row, weight in zip(train_rows, weights or []):
        row["weight"] = weight
    progress.set_phase("Scoring the untrained model")
    task.before_training(model, tokenizer, sets, hyper.max_length)
    teacher = teacher_facts = None
    if hyper.distil:
        teacher, model = model, _student(model, hyper, notes)
        progress.set_phase("Measuring the teacher")
        teacher_facts = measure(teacher, tokenizer, task, sets["eval"], encoded["eval"], hyper, "teacher")
        notes += teacher_overlap_note(spec.base_model, sets["eval"])
    if hyper.freeze_encoder:
        freeze_encoder(model)
    if hyper.lora:
        model = apply_lora(model, hyper, task)
    trainable, total = count_parameters(model)
    best = BestWeightsCallback(task.best_metric, task.greater_is_better)
    callbacks = [LiveCallback(progress, stop), best]
    early = EarlyStoppingCallback(early_stopping_patience=hyper.patience) if hyper.patience > 0 else None
    if early:
        callbacks.append(early)
    with tempfile.TemporaryDirectory(prefix="finetune-") as out_dir:
        trainer = PlaygroundTrainer(model=model, args=training_arguments(hyper, task, len(train_rows), out_dir),
                                    train_dataset=train_rows, eval_dataset=encoded["eval"], processing_class=tokenizer,
                                    data_collator=with_weights(task.collator(tokenizer)),
                                    compute_metrics=task.compute_metrics(), callbacks=callbacks,
                                    teacher=teacher if hyper.distil_alpha > 0 else None,
                                    alpha=hyper.distil_alpha, temperature=hyper.distil_temperature)
        trainer.remove_callback(PrinterCallback)  # progress goes to TrainingProgress, not to the server's stdout
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        progress.set_phase("Evaluating the best weights")
        metrics = {which: task.evaluate(trainer, tokenizer, sets[which], encoded[which], which, hyper.max_length)
                   for which in sets}
    steps = trainer.state.global_step
    early_stopped = bool(early) and not stop.stopped and steps < trainer.state.max_steps
    if hyper.lora:  # fold the adapter into the weights so every tab loads it as a plain model
        model = trainer.model.merge_and_unload()
    progress.set_phase("Saving to the model store")
    ending = f"{stop.reason}; " if stop.stopped else "early stopping; " if early_stopped else ""
    folder, card = save_to_store(store, spec, task, model, tokenizer, metrics,
                                 {"trainable_params": trainable, "total_params": total, "steps": steps},
                                 f"{ending}kept the weights of step {best.best_step or steps}" +
                                 "".join(f"; {n}" for n in notes))
    if isinstance(task, ClassificationTask):
        progress.set_phase("Measuring the out-of-distribution flag's statistics")
        ood_statistics(model, tokenizer, data, task).save(folder)
    facts = measure(model, tokenizer, task, sets["eval"], encoded["eval"], hyper, "student" if teacher else card.name,
                    metrics["eval"], trainable, seconds)
    progress.set_phase("Done")
    return FineTuneResult(spec, folder, metrics["eval"], metrics.get("extra"), trainable, total, steps,
                          seconds, stop.reason if stop.stopped else "", early_stopped, best.best_step, card,
                          tuple(notes), tuple(f for f in (teacher_facts, facts) if f),
                          ("kd_loss", "ce_loss") if teacher else ())


def measure(model, tokenizer, task: FineTuneTask, examples: Examples, encoded: list[dict], hyper: Hyperparameters,
            name: str, metrics: Metrics | None = None, trained_params: int = 0,
            train_seconds: float | None = None) -> ModelFacts:
    """Size, speed on the validation texts (texts/s, or tokens/s for language models) and the validation score."""
    import torch
    from transformers import Trainer

    _, params = count_parameters(model)
    size = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    rows = encoded[:256]
    collate = task.collator(tokenizer)
    model.eval()
    device = next(model.parameters()).device
    batches = [{k: v.to(device) for k, v in collate(rows[i:i + 32]).items() if k != "labels"}
               for i in range(0, len(rows), 32)]
    with torch.no_grad():
        model(**batches[0])  # warm-up: first-call allocations would be charged to whichever model goes first
        start = time.perf_counter()
        for batch in batches:
            model(**batch)
        seconds = max(time.perf_counter() - start, 1e-9)
    lm = isinstance(task, CausalLmTask)
    speed = sum(len(r["input_ids"]) for r in rows) / seconds if lm else len(rows) / seconds
    if metrics is None:  # a model that was not trained here (the teacher): score it the same way
        with tempfile.TemporaryDirectory(prefix="finetune-score-") as out_dir:
            scorer = Trainer(model=model, args=training_arguments(hyper, task, len(encoded), out_dir),
                             eval_dataset=encoded, data_collator=collate, processing_class=tokenizer)
            metrics = task.evaluate(scorer, tokenizer, examples, encoded, "eval", hyper.max_length)
    score_name, score = score_of(metrics)
    return ModelFacts(name, params, trained_params, size, speed, "tokens/s" if lm else "texts/s", score_name, score,
                      train_seconds)


def score_of(metrics: Metrics) -> tuple[str, float]:
    summary = metrics.summary()
    for key in ("accuracy", "entity_f1", "perplexity_after"):
        if key in summary:
            return key.replace("_after", ""), summary[key]
    key = next(iter(summary))
    return key, summary[key]


def ood_statistics(model, tokenizer, data: DataSplit, task: FineTuneTask, limit: int = 2000):
    """What the classifier's training texts look like to it, for the Classify tab's out-of-distribution flag: class
    means and covariance from the training texts, thresholds from the validation texts."""
    from core.classify.ood import fit_stats, prose_sentences
    from core.models.paths import calibration_text

    model.eval()
    ids = {label: i for i, label in enumerate(task.labels)}
    prose = prose_sentences(calibration_text())
    return fit_stats(model, tokenizer, data.train.texts[:limit], [ids[label] for label in data.train.labels[:limit]],
                     data.eval.texts[:limit], prose)


def train_job(spec: FineTuneSpec, base_path: str, store_root: str, progress: TrainingProgress,
              stop: StopFlag) -> FineTuneResult:
    """What a fine-tuning job runs in its child process (core.finetune.jobs): picklable arguments only."""
    return run_finetune(spec, ModelStore(store_root), progress, stop, base_path=base_path)
