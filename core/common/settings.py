"""What the operator of a deployment decides, not its visitors: flags and environment variables, read once.

On a public Space every visitor is a stranger, so whatever reaches outside the app (running a hub
repository's Python, pushing to the Hub, calling other servers) is off unless the operator turns it
on, and heavy work gets a time and size budget. `--classroom` (or LLMPG_CLASSROOM=1) is the setting
for a teacher's shared machine: lighter tabs, shorter replies, smaller budgets.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def env_number(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    try:
        return float(value) if value else default
    except ValueError:
        raise SystemExit(f"{name}={value!r} is not a number") from None


@dataclass(frozen=True)
class Settings:
    allow_remote_code: bool = False  # trust_remote_code=True loads (a hub repository's own Python)
    allow_hub_push: bool = False  # Fine-tune's "Push to the Hub"
    allow_remote_servers: bool = False  # Chat's "Remote server" engine (the app then calls URLs users type)
    classroom: bool = False
    heavy_runs_at_once: int = 2
    run_seconds: float = 3600.0  # time budget of one heavy run
    max_train_examples: int = 100_000  # size budget of one fine-tuning run
    max_new_tokens: int = 1024  # longest reply a chat request may ask for
    api_key: str = ""  # required by the OpenAI-compatible API when set
    chat_runtime: str = "auto"  # auto: ONNX Runtime on a CPU when an export keeps quality, else PyTorch; or torch, onnx
    chat_batch: int = 16  # chat replies decoded together at most (continuous batching); 1 = one at a time

    @classmethod
    def classroom_defaults(cls) -> Settings:
        return cls(classroom=True, run_seconds=300.0, max_train_examples=2_000, max_new_tokens=256)

    @classmethod
    def from_env(cls) -> Settings:
        base = cls.classroom_defaults() if env_flag("LLMPG_CLASSROOM") else cls()
        return replace(
            base,
            allow_remote_code=env_flag("LLMPG_ALLOW_REMOTE_CODE"),
            allow_hub_push=env_flag("LLMPG_ALLOW_HUB_PUSH"),
            allow_remote_servers=env_flag("LLMPG_ALLOW_REMOTE_SERVERS"),
            heavy_runs_at_once=int(env_number("LLMPG_HEAVY_RUNS", base.heavy_runs_at_once)),
            run_seconds=env_number("LLMPG_RUN_SECONDS", base.run_seconds),
            max_train_examples=int(env_number("LLMPG_MAX_TRAIN_EXAMPLES", base.max_train_examples)),
            max_new_tokens=int(env_number("LLMPG_MAX_NEW_TOKENS", base.max_new_tokens)),
            api_key=os.environ.get("LLMPG_API_KEY", ""),
            chat_runtime=os.environ.get("LLMPG_CHAT_RUNTIME", base.chat_runtime),
            chat_batch=int(env_number("LLMPG_CHAT_BATCH", base.chat_batch)),
        )

    def describe(self) -> str:
        """One line for the start-up log (never the API key itself)."""
        on = [name for name in ("allow_remote_code", "allow_hub_push", "allow_remote_servers", "classroom")
              if getattr(self, name)]
        return (f"settings: {', '.join(on) or 'defaults'}; heavy runs {self.heavy_runs_at_once} at once, "
                f"{self.run_seconds:.0f} s each; max new tokens {self.max_new_tokens}; chat runtime {self.chat_runtime}, "
                f"batches of up to {self.chat_batch}; "
                f"API key {'set' if self.api_key else 'not set'}")
