"""Many chat users from one light process: asyncio and httpx, reading server-sent events as a browser page does,
so the clients do not take the server's cores (a thread per user, or a gradio_client each, would).

    PYTHONPATH=. .venv/bin/python -m bench.light_client --url http://127.0.0.1:7860/ --users 16 --via page

`--via page` speaks gradio's own queue protocol (sse_v3: POST queue/join, then GET queue/data), exactly what the
page sends for the Chat tab's Send; `--via api` streams /v1/chat/completions. Every user asks its own question with
the Chat tab's default sampling and its own seed. Prints one JSON object: each reply's tokens, time to the first
text and to the end, as each client saw them.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import time
from dataclasses import asdict

import httpx

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))

from bench.load_tools import QUESTIONS, Reply  # noqa: E402

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _text(chatbot: list) -> str:
    if not chatbot or chatbot[-1].get("role") != "assistant":
        return ""
    content = chatbot[-1]["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content or [])


def _apply_diff(value, diff):
    from gradio_client.utils import apply_diff

    return apply_diff(value, diff)


async def page_user(http: httpx.AsyncClient, url: str, fn: dict, question: str, seed: int, tokens: int,
                    greedy: bool) -> Reply:
    """One Send in the Chat tab: join the queue, then read the event stream until the reply completes."""
    session = f"{random.getrandbits(64):016x}"
    values = {"message": question, "max_new_tokens": tokens, "seed": seed} | ({"temperature": 0} if greedy else {})
    data = [None if kind == "state" else values.get(name, default) for name, kind, default in fn["inputs"]]
    start = time.perf_counter()
    joined = await http.post(f"{url}gradio_api/queue/join", json={"data": data, "event_data": None,
                                                                  "fn_index": fn["id"], "trigger_id": None,
                                                                  "session_hash": session})
    joined.raise_for_status()
    outputs, first = None, None
    async with http.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session}) as stream:
        async for line in stream.aiter_lines():
            if not line.startswith("data:"):
                continue
            message = json.loads(line[5:])
            if message.get("msg") == "process_generating":
                diff = message["output"]["data"]
                outputs = diff if outputs is None else [_apply_diff(o, d) for o, d in zip(outputs, diff)]
                text = _text(outputs[0])
                if first is None and text.strip() and not text.startswith(("⏳", "…")):
                    first = time.perf_counter() - start
            elif message.get("msg") == "process_completed":
                if not message.get("success", True):
                    raise RuntimeError(f"the page's Send failed: {message['output'].get('error')}")
                outputs = message["output"].get("data", outputs)
                break
    seconds = time.perf_counter() - start
    count = re.search(r"(\d+) tokens?", outputs[2] if outputs else "")
    return Reply(int(count.group(1)) if count else 0, first or seconds, seconds)


async def api_user(http: httpx.AsyncClient, url: str, fn: dict, question: str, seed: int, tokens: int,
                   greedy: bool) -> Reply:
    """One streamed /v1/chat/completions request with the Chat tab's default sampling (read from the page)."""
    ui = {name: default for name, _, default in fn["inputs"]}
    body = {"model": MODEL, "stream": True, "max_tokens": tokens, "seed": seed, "logprobs": True,
            "temperature": 0 if greedy else ui["temperature"], "top_p": ui["top_p"], "top_k": ui["top_k"],
            "repetition_penalty": ui["repetition_penalty"], "messages": [{"role": "user", "content": question}]}
    start, first, count = time.perf_counter(), None, 0
    async with http.stream("POST", f"{url}v1/chat/completions", json=body) as stream:
        if stream.status_code != 200:
            raise RuntimeError(f"/v1/chat/completions answered {stream.status_code}: {(await stream.aread())[:200]}")
        async for line in stream.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = (json.loads(line[6:]).get("choices") or [{}])[0]
            if (choice.get("delta") or {}).get("content") and first is None:
                first = time.perf_counter() - start
            count += len((choice.get("logprobs") or {}).get("content") or [])
    seconds = time.perf_counter() - start
    return Reply(count, first or seconds, seconds)


async def send_fn(http: httpx.AsyncClient, url: str) -> dict:
    """The Chat tab's Send event: its id and inputs (name, kind, default value on the page), from the app's config."""
    config = (await http.get(f"{url}config")).json()
    components = {c["id"]: c for c in config["components"]}
    dependency = next(d for d in config["dependencies"] if d.get("api_name") == "chat_send")
    # the handler's parameters, in order (ui/chat_tab.py ChatHandlers.send)
    names = ["session", "message", "system", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
             "max_new_tokens", "seed", "no_system"]
    if len(names) != len(dependency["inputs"]):
        raise RuntimeError(f"chat_send takes {len(dependency['inputs'])} inputs; this client knows {names}")
    inputs = [(name, components[i]["type"], components[i].get("props", {}).get("value"))
              for name, i in zip(names, dependency["inputs"])]
    return {"id": dependency["id"], "inputs": inputs}


async def run(url: str, users: int, via: str, tokens: int, seed: int, greedy: bool) -> dict:
    limits = httpx.Limits(max_connections=4 * users + 8, max_keepalive_connections=4 * users + 8)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as http:
        fn = await send_fn(http, url)
        user = page_user if via == "page" else api_user
        start = time.perf_counter()
        jobs = [user(http, url, fn, QUESTIONS[i % len(QUESTIONS)], seed + i, tokens, greedy) for i in range(users)]
        replies = await asyncio.gather(*jobs)
        return {"wall_s": time.perf_counter() - start, "replies": [asdict(r) for r in replies]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--users", type=int, default=1)
    parser.add_argument("--via", choices=("page", "api"), default="page")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--greedy", action="store_true")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.url, args.users, args.via, args.tokens, args.seed, args.greedy))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
