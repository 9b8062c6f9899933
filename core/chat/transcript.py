"""A conversation as a JSON file, to restore it later (on this app or another); ui/chat_view.py writes the Markdown.

The JSON keeps every message, every reply version, the model, runtime and precision, every sampling setting and
seed, and optionally each token's probability and top alternatives (with their ids, so branching works again
after a restore). Uploaded files are checked: the format, its size, and every field's type.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, fields, replace
from typing import Any

from core.chat.sampling import SamplingSettings
from core.chat.session import ChatSession, Exchange, Reply
from core.chat.token_view import TokenChoice, TokenInfo, TokenStep
from core.chat.types import FinishReason, ReplyStats, UserAction
from core.common.errors import InputError

FORMAT, VERSION = "llm-playground-conversation", 1
MAX_BYTES, MAX_EXCHANGES = 4 * 2**20, 500


def _tokens(reply: Reply) -> list[dict]:
    if reply.steps:
        return [{"id": s.token_id, "text": t.text, "prob": s.prob,
                 "top": [[i, a.text, a.prob] for i, a in zip(s.alt_ids, t.alternatives)]}
                for s, t in zip(reply.steps, reply.tokens)]
    return [{"text": t.text, "prob": t.prob, "top": [[None, a.text, a.prob] for a in t.alternatives]} for t in reply.tokens]


# why a reply ended, as version 1 files written before the engine's FinishReason spelled it
_OLD_FINISH = {"end of text": FinishReason.END_OF_TEXT, "max new tokens": FinishReason.LENGTH,
               "next turn started": FinishReason.STOP_STRING, "stopped by user": FinishReason.STOPPED,
               "the client went away": FinishReason.DISCONNECTED, "failed": FinishReason.FAILED}


def _stats_dict(stats: ReplyStats) -> dict:
    return asdict(stats) | {"finish": stats.finish.value if stats.finish else None,
                            "ended_by": stats.ended_by.value if stats.ended_by else None}


def _stats(values: Any) -> ReplyStats | None:
    stats = _typed(ReplyStats, values)
    if stats is None or stats.finish is None:
        return stats
    finish = str(stats.finish)
    known = {f.value: f for f in FinishReason} | _OLD_FINISH
    if finish not in known:
        raise InputError(f"the file's reply stats have an unknown finish reason {finish!r}")
    ended_by = UserAction(stats.ended_by) if stats.ended_by in {a.value for a in UserAction} else None
    return replace(stats, finish=known[finish], ended_by=ended_by)


def to_json(session: ChatSession, model: dict, with_tokens: bool = True) -> str:
    """`model`: id, runtime, precision (and the remote server, when there is one)."""
    exchanges = [{"user": e.user, "shown": e.shown, "replies": [
        {"text": r.text, "settings": asdict(r.settings) if r.settings else None,
         "stats": _stats_dict(r.stats) if r.stats else None, "branched_at": r.branched_at, "prompt_ids": r.prompt_ids,
         **({"tokens": _tokens(r)} if with_tokens else {})} for r in e.replies]} for e in session.exchanges]
    return json.dumps({"format": FORMAT, "version": VERSION, "exported": time.strftime("%Y-%m-%dT%H:%M:%S"),
                       "model": model, "system": session.system, "exchanges": exchanges}, indent=1, ensure_ascii=False)


def _typed(cls, values: Any):
    """A dataclass from a dict, keeping only its fields; type problems become one readable error."""
    if values is None:
        return None
    if not isinstance(values, dict):
        raise InputError(f"the file's {cls.__name__} entries must be objects")
    return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


def _reply(data: dict) -> Reply:
    tokens = data.get("tokens") or []
    infos = [TokenInfo(t["text"], float(t["prob"]), tuple(TokenChoice(a[1], float(a[2])) for a in t["top"]))
             for t in tokens]
    steps = ([TokenStep(int(t["id"]), float(t["prob"]), tuple(int(a[0]) for a in t["top"]),
                        tuple(float(a[2]) for a in t["top"])) for t in tokens]
             if tokens and all(t.get("id") is not None and all(a[0] is not None for a in t["top"]) for t in tokens)
             else [])
    return Reply(str(data["text"]), _stats(data.get("stats")), _typed(SamplingSettings, data.get("settings")),
                 steps, infos, data.get("branched_at"), [int(i) for i in data.get("prompt_ids") or []])


def from_json(text: str) -> tuple[list[Exchange], str | None, dict]:
    """(exchanges, system prompt (None: none at all), model info) from an exported file; InputError says what is wrong
    with it."""
    if len(text.encode("utf-8")) > MAX_BYTES:
        raise InputError(f"The file is larger than {MAX_BYTES // 2**20} MiB; a conversation export is far smaller.")
    try:
        data = json.loads(text)
    except ValueError as err:
        raise InputError(f"The file is not JSON ({err}).") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError("This is not a conversation exported from LLM Playground (the 'format' field is missing).")
    if data.get("version") != VERSION:
        raise InputError(f"This export has version {data.get('version')}; this app reads version {VERSION}.")
    raw = data.get("exchanges")
    if not isinstance(raw, list) or len(raw) > MAX_EXCHANGES:
        raise InputError(f"The file must hold a list of at most {MAX_EXCHANGES} exchanges.")
    try:
        exchanges = [Exchange(str(e["user"]), [_reply(r) for r in e["replies"]],
                              min(max(0, int(e.get("shown", 0))), len(e["replies"]) - 1)) for e in raw]
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise InputError(f"The file's exchanges are damaged ({type(err).__name__}: {err}).") from None
    if any(not e.replies for e in exchanges):
        raise InputError("Every exchange in the file needs at least one reply.")
    system = data.get("system", "")
    return (exchanges, None if system is None else str(system),
            data.get("model") if isinstance(data.get("model"), dict) else {})
