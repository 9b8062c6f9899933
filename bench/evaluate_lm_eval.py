"""lm-evaluation-harness's `local-completions` model scoring the app's /v1/completions, next to the Evaluate tab's
numbers for the same model, task and runtime, in one run.

The task is the team's own assets/eval_tasks/capitals.jsonl, given to lm-eval as a local multiple_choice task (YAML
written to a temporary folder); lm-eval runs twice, with tokenized_requests true (token ids) and false (texts),
both with the remote tokenizer (/tokenizer_info, /tokenize, /detokenize). lm-eval is not a dependency of the
project (it pulls datasets, pyarrow, nltk...): install it in its own environment and point LM_EVAL at its CLI.

    LM_EVAL=/path/to/venv/bin/lm_eval PYTHONPATH=. .venv/bin/python bench/evaluate_lm_eval.py
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
TASK = ROOT / "assets" / "eval_tasks" / "capitals.jsonl"
YAML = """task: playground_capitals
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def wait_until_served(url: str, model: str, timeout: float = 600) -> None:
    """The first request starts the model's load (503 until it is ready)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = httpx.post(url + "v1/completions", json={"model": model, "prompt": "Hi", "max_tokens": 1}, timeout=60)
        if answer.status_code == 200:
            return
        time.sleep(2)
    raise RuntimeError(f"{model} was not served within {timeout:.0f} s: {answer.text[:200]}")


def run_lm_eval(cli: str, url: str, model: str, folder: Path, tokenized: bool) -> tuple[dict, float]:
    out = folder / f"out-{tokenized}"
    args = (f"model={model},base_url={url}v1/completions,tokenizer_backend=remote,tokenized_requests={tokenized},"
            "num_concurrent=1,max_retries=3")
    command = [cli, "--model", "local-completions", "--model_args", args, "--tasks", "playground_capitals",
               "--include_path", str(folder), "--batch_size", "4", "--output_path", str(out)]
    start = time.perf_counter()
    subprocess.run(command, check=True, env=os.environ | {"HF_DATASETS_OFFLINE": "1"}, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]["playground_capitals"]
    return results, seconds


def main() -> int:
    cli = os.environ.get("LM_EVAL") or shutil.which("lm_eval")
    if not cli:
        print("skipped: lm-evaluation-harness is not installed (pip install 'lm_eval[api]' in its own environment, "
              "then set LM_EVAL to its lm_eval command)")
        return 0
    from bench.load_tools import launched_app
    from core.evaluate.multiple_choice import read_task
    from core.evaluate.runs import EvaluateSettings, ModelSpec, evaluate_choices
    from core.models.device import configure_threads
    from core.models.manager import ModelManager
    from core.models.registry import DEFAULT_CHAT_MODEL
    from core.services import Services

    threads = configure_threads(2)
    task = read_task(TASK, "capitals", "assets/eval_tasks/capitals.jsonl")
    start = time.perf_counter()
    *_, run = evaluate_choices(Services(manager=ModelManager(offline=True)).chat, [ModelSpec(DEFAULT_CHAT_MODEL)], task,
                               EvaluateSettings())
    ours, ours_s = run.rows[0], time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp, launched_app("--tabs", "chat") as (url, _memory):
        folder = Path(tmp)
        (folder / "capitals.yaml").write_text(YAML.format(data=TASK), encoding="utf-8")
        wait_until_served(url, DEFAULT_CHAT_MODEL)
        theirs = {tokenized: run_lm_eval(cli, url, DEFAULT_CHAT_MODEL, folder, tokenized) for tokenized in (True, False)}
    print(f"{DEFAULT_CHAT_MODEL} as Chat serves it ({ours.runtime}), {threads} threads, {ours.items} questions of "
          "assets/eval_tasks/capitals.jsonl (4 choices)")
    for metric in ("acc", "acc_norm"):
        line = f"{metric:8s} Evaluate {getattr(ours, metric):.4f}"
        for tokenized, (results, _s) in theirs.items():
            line += f" | lm-eval tokenized_requests={tokenized} {results[f'{metric},none']:.4f}"
        print(line)
    print(f"seconds: Evaluate {ours_s:.1f} (load included) | lm-eval over HTTP "
          + " | ".join(f"tokenized_requests={t} {s:.1f}" for t, (_r, s) in theirs.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
