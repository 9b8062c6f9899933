"""OpenAI-compatible endpoints on the app's own server and port: GET /v1/models, POST /v1/chat/completions and
POST /v1/completions. They use the same engines (and so the same batching and waiting line) as the Chat tab.

Wiring only: requests are checked and answers shaped by core.chat.openai_protocol. With an API key set
(LLMPG_API_KEY), every call needs `Authorization: Bearer <key>`. Keys and prompts are never logged.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from dataclasses import replace
from typing import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from core.chat.engine import GenerationError
from core.chat.openai_protocol import ApiError, GenerationRequest, ResponseWriter, parse_request
from core.chat.prompting import build_prompt
from core.common.errors import BusyError, PlaygroundError
from core.services import Services

log = logging.getLogger("llm_playground")
DISCONNECT_POLL_S = 0.1


def _error(err: ApiError) -> JSONResponse:
    headers = {"Retry-After": "5"} if err.status in (429, 503) else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def _check_key(services: Services, request: Request) -> None:
    key = services.settings.api_key
    if not key:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.removeprefix("Bearer ").strip().encode(), key.encode()):
        raise ApiError(401, "Missing or wrong API key: send 'Authorization: Bearer <key>'.", type="authentication_error",
                       code="invalid_api_key")


def _served(services: Services, model: str):
    """The model's engine, or 404 (not offered), 503 (still loading: come back) or 500 (it failed to load)."""
    offered = services.chat_models()
    if model not in offered:
        raise ApiError(404, f"The model '{model}' does not exist here; GET /v1/models lists the ones that do.",
                       "model", code="model_not_found")
    target = offered[model]
    served = services.chat.ready(target)
    if served is not None:
        return served
    if target in services.chat.errors:
        raise ApiError(500, f"The model '{model}' could not be loaded: {services.chat.errors.pop(target)}",
                       "model", type="server_error")
    services.chat.serve_in_background(target)
    raise ApiError(503, f"The model '{model}' is loading (the first load can take a minute); retry in a few seconds.",
                   "model", type="server_error", code="model_loading")


def _submit(services: Services, parsed: GenerationRequest):
    served = _served(services, parsed.model)
    if parsed.prompt is not None:  # /v1/completions: the text as it is
        ids = served.tokenizer(parsed.prompt)["input_ids"]
    else:
        prompt = build_prompt(served.tokenizer, list(parsed.turns), parsed.message, use_template=served.is_chat,
                              system=parsed.system, context=served.context,
                              max_new_tokens=parsed.settings.max_new_tokens)
        ids, stops = prompt.input_ids, prompt.stop_strings
        parsed = replace(parsed, stop=parsed.stop + stops) if stops else parsed
    try:
        engine_request = served.engine.submit(ids, parsed.settings, stop_strings=parsed.stop,
                                              record_steps=parsed.logprobs)
    except GenerationError as err:
        raise ApiError(400, str(err), "messages" if parsed.prompt is None else "prompt",
                       code="context_length_exceeded") from None
    except BusyError as err:
        raise ApiError(429, str(err), type="rate_limit_error") from None
    return served, parsed, engine_request, len(ids)


def _sse(payload) -> str:
    return f"data: {json.dumps(payload)}\n\n"


async def _stream(http: Request, writer: ResponseWriter, engine_request) -> AsyncIterator[str]:
    """Server-sent events; a client that goes away cancels its request (its slot is freed at the next step)."""
    chunks = engine_request.chunks()
    try:
        if writer.chat:
            yield _sse(writer.opening())
        while True:
            chunk = await run_in_threadpool(next, chunks, None)
            if chunk is None or await http.is_disconnected():
                break
            if chunk.done and chunk.failed:
                yield _sse(ApiError(500, f"The reply failed: {chunk.error}", type="server_error").body())
                break
            delta = writer.delta(chunk)
            if delta is not None:
                yield _sse(delta)
        yield "data: [DONE]\n\n"
    finally:
        chunks.close()


async def _whole(http: Request, writer: ResponseWriter, engine_request) -> JSONResponse:
    while not await run_in_threadpool(engine_request.wait, DISCONNECT_POLL_S):
        if await http.is_disconnected():
            engine_request.cancel()
            return JSONResponse({}, status_code=499)
    chunk = engine_request.result()
    if chunk.failed:
        return _error(ApiError(500, f"The reply failed: {chunk.error}", type="server_error"))
    return JSONResponse(writer.whole(chunk))


def openai_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/v1")

    async def generate(http: Request, chat: bool):
        try:
            _check_key(services, http)
            try:
                body = await http.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ApiError(400, "The request body is not valid JSON.") from None
            parsed = parse_request(body, chat, services.settings.max_new_tokens)
            served, parsed, engine_request, prompt_tokens = await asyncio.to_thread(_submit, services, parsed)
        except ApiError as err:
            return _error(err)
        except PlaygroundError as err:
            return _error(ApiError(400, str(err)))
        writer = ResponseWriter(parsed, served.tokenizer, prompt_tokens, chat)
        if parsed.stream:
            return StreamingResponse(_stream(http, writer, engine_request), media_type="text/event-stream")
        return await _whole(http, writer, engine_request)

    @router.get("/models")
    async def models(http: Request):
        try:
            _check_key(services, http)
        except ApiError as err:
            return _error(err)
        created = int(time.time())
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                            "owned_by": "llm-playground"} for model_id in services.chat_models()]}

    @router.post("/chat/completions")
    async def chat_completions(http: Request):
        return await generate(http, chat=True)

    @router.post("/completions")
    async def completions(http: Request):
        return await generate(http, chat=False)

    return router


def warn_if_open(services: Services, host: str) -> None:
    """A server reachable from other machines without a key lets anyone use its models."""
    if not services.settings.api_key and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("The OpenAI-compatible API on %s:/v1 needs no key: anyone who can reach this host can use it. "
                    "Set LLMPG_API_KEY to require 'Authorization: Bearer <key>'.", host)


def launch(demo, services: Services, block: bool = True, **launch_options):
    """Serve the Blocks (with gradio's queue) and the /v1 routes on one server and port. The routes are part of the
    app before the server starts, so a client that connects the moment the port opens finds them."""
    warn_if_open(services, launch_options.get("server_name") or "127.0.0.1")
    demo.queue(default_concurrency_limit=4).launch(prevent_thread_lock=True,
                                                   app_kwargs={"routes": openai_router(services).routes},
                                                   **launch_options)
    if block:
        demo.block_thread()
    return demo
