"""Wall time of the Fine-tune tab's one-click example, through the tab's own handlers (example, preview, Train) and
its background job (a child process), from the click on Train to the finished run.

    PYTHONPATH=. .venv/bin/python bench/finetune_example.py [--task text-classification] [--examples N]

`--examples` overrides the example's sample (0 = the full run on every example). Target: the example finishes in
3 minutes or less on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from dataclasses import asdict

TARGET_S = 180


def main() -> int:
    from core.finetune.jobs import JobRegistry
    from core.finetune.tasks import default_hyperparameters
    from core.models.device import configure_threads
    from core.models.manager import ModelManager
    from core.models.registry import TEXT_CLASSIFICATION
    from core.models.store import ModelStore
    from core.services import Services
    from ui.finetune_tab import DATA_FIELDS, DEFAULT_BASE, FinetuneHandlers

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default=TEXT_CLASSIFICATION)
    parser.add_argument("--examples", type=int, default=None)
    args = parser.parse_args()
    configure_threads()
    services = Services(manager=ModelManager(offline=True), store=ModelStore(tempfile.mkdtemp(prefix="bench-store-")))
    handlers = FinetuneHandlers(services, JobRegistry(services.work))
    path, sample = handlers.example(args.task)
    _, text, label, prompt, lm_format, _note = handlers.file_changed(path, args.task)
    form = {"task": args.task, "train_file": path, "text_col": text["value"], "label_col": label["value"],
            "lm_format": lm_format, "prompt_col": prompt["value"], "eval_percent": 10, "eval_file": None,
            "ood_file": None, "max_examples": sample if args.examples is None else args.examples,
            **asdict(default_hyperparameters(args.task))}
    print(f"{args.task}: {path} · examples to use {form['max_examples'] or 'all'} · "
          f"{handlers.check(form['seed'], **{k: form[k] for k in DATA_FIELDS})}")
    user = uuid.uuid4().hex
    start = time.perf_counter()
    _, message = handlers.train(user, DEFAULT_BASE[args.task], "", **form)
    print(message)
    job = handlers.jobs.get(user)
    first_eta = None
    while job.active:
        snap = job.progress.snapshot()
        if first_eta is None and snap.eta_seconds is not None and snap.step:
            first_eta = snap.eta_seconds
            print(f"first ETA shown: {first_eta:.0f} s (step {snap.step}/{snap.total_steps})")
        time.sleep(0.5)
    seconds = time.perf_counter() - start
    if job.error:
        print(f"failed: {job.error}")
        return 1
    result = job.result
    print(f"steps {result.steps} · training {result.train_seconds:.0f} s · {result.metrics.summary()}")
    print(f"example run {seconds:.0f} s (Train to finished) | target {TARGET_S} s | ratio {seconds / TARGET_S:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
