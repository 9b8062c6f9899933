"""OpenAI-compatible endpoints on the app's own server and port: GET /v1/models, POST /v1/chat/completions and
POST /v1/completions, plus vLLM's POST /tokenize, POST /detokenize and GET /tokenizer_info (at the root, where
vLLM and lm-evaluation-harness's remote tokenizer have them). They use the same engines (and so the same batching
and waiting line) as the Chat tab; prompt log-probabilities (`echo`) come from the scoring pass the Evaluate tab uses.

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

from api.readiness import readiness_router
from core.chat.engine import GenerationError
from core.chat.openai_protocol import (
    ApiError,
    GenerationRequest,
    ResponseWriter,
    detokenize_answer,
    parse_request,
    prompt_ids,
    tokenize_answer,
    tokenizer_info,
)
from core.chat.prompting import build_prompt, context_length
from core.common.errors import BusyError, PlaygroundError
from core.evaluate.completions import answer_completions
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
    if parsed.prompts:  # /v1/completions: the text (or the token ids) as it is
        ids = prompt_ids(served.tokenizer, parsed.prompts[0], parsed.add_special_tokens, len(served.tokenizer), 0)
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
        raise ApiError(400, str(err), "prompt" if parsed.prompts else "messages",
                       code="context_length_exceeded") from None
    except BusyError as err:
        raise ApiError(429, str(err), type="rate_limit_error") from None
    return served, parsed, engine_request, len(ids)


def _answer_many(services: Services, parsed: GenerationRequest) -> dict:
    """Several prompts, or a scored request (echo, max_tokens 0, logprobs above 5): answered whole."""
    served = _served(services, parsed.model)
    vocabulary = len(served.tokenizer)
    prompts = [prompt_ids(served.tokenizer, p, parsed.add_special_tokens, vocabulary, n)
               for n, p in enumerate(parsed.prompts)]
    try:
        answers = answer_completions(served, parsed, prompts)
    except GenerationError as err:
        raise ApiError(400, str(err), "prompt", code="context_length_exceeded") from None
    except BusyError as err:
        raise ApiError(429, str(err), type="rate_limit_error") from None
    except RuntimeError as err:  # a failed reply or forward pass: this request fails, the engine keeps serving
        raise ApiError(500, f"The request failed: {err}", type="server_error") from None
    texts = [p if isinstance(p, str) else served.tokenizer.decode(ids) for p, ids in zip(parsed.prompts, prompts)]
    return ResponseWriter(parsed, served.tokenizer, 0, chat=False).answers(answers, texts)


def _tokenizer(services: Services, model: str | None) -> tuple[object, int | None]:
    """(tokenizer, context) of a model the API offers; without a model, the one being served (vLLM serves one)."""
    if model is None:
        served = {s.model_id: s for s in services.chat.served()}
        if len(served) > 1:
            raise ApiError(400, f"Several models are served here ({', '.join(served)}); name one in 'model'.", "model")
        if served:
            only = next(iter(served.values()))
            return only.tokenizer, only.context
        model = services.default_chat_model
    offered = services.chat_models()
    if model not in offered:
        raise ApiError(404, f"The model '{model}' does not exist here; GET /v1/models lists the ones that do.",
                       "model", code="model_not_found")
    served = services.chat.ready(offered[model])
    if served is not None:
        return served.tokenizer, served.context
    if services.manager.in_memory(offered[model]):
        loaded = services.manager.load(offered[model])
        return loaded.tokenizer, context_length(loaded.model, loaded.tokenizer)
    return services.manager.tokenizer(offered[model]), None


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


async def _json_body(http: Request) -> dict:
    try:
        body = await http.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


def openai_router(services: Services) -> APIRouter:
    """The /v1 routes, and beside them (at the root) the tokenizer routes."""
    root, router = APIRouter(), APIRouter(prefix="/v1")

    async def generate(http: Request, chat: bool):
        try:
            _check_key(services, http)
            parsed = parse_request(await _json_body(http), chat, services.settings.max_new_tokens)
            if not chat and (parsed.scored or len(parsed.prompts) > 1):
                return JSONResponse(await asyncio.to_thread(_answer_many, services, parsed))
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

    async def tokenizer_route(http: Request, answer):
        try:
            _check_key(services, http)
            body = await _json_body(http) if http.method == "POST" else dict(http.query_params)
            model = body.get("model")
            if model is not None and not isinstance(model, str):
                raise ApiError(400, "'model' must be a string.", "model")
            tokenizer, context = await asyncio.to_thread(_tokenizer, services, model)
            return answer(tokenizer, body, context)
        except ApiError as err:
            return _error(err)
        except PlaygroundError as err:
            return _error(ApiError(400, str(err)))

    @root.post("/tokenize")
    async def tokenize(http: Request):
        return await tokenizer_route(http, tokenize_answer)

    @root.post("/detokenize")
    async def detokenize(http: Request):
        return await tokenizer_route(http, lambda tokenizer, body, _context: detokenize_answer(tokenizer, body))

    @root.get("/tokenizer_info")
    async def info(http: Request):
        return await tokenizer_route(http, lambda tokenizer, _body, context: tokenizer_info(tokenizer) | {
            "model_max_length": context})

    root.include_router(router)
    return root


def warn_if_open(services: Services, host: str) -> None:
    """A server reachable from other machines without a key lets anyone use its models."""
    if not services.settings.api_key and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("The OpenAI-compatible API on %s:/v1 needs no key: anyone who can reach this host can use it. "
                    "Set LLMPG_API_KEY to require 'Authorization: Bearer <key>'.", host)


def launch(demo, services: Services, block: bool = True, **launch_options):
    """Serve the Blocks (with gradio's queue), the /v1 routes and GET /readiness on one server and port, then start
    preparing the default models. The routes are part of the app before the server starts, so a client that
    connects the moment the port opens finds them."""
    warn_if_open(services, launch_options.get("server_name") or "127.0.0.1")
    routes = openai_router(services).routes + readiness_router(services.readiness).routes
    demo.queue(default_concurrency_limit=4).launch(prevent_thread_lock=True, app_kwargs={"routes": routes},
                                                   **launch_options)
    services.readiness.start()
    if block:
        demo.block_thread()
    return demo
