"""The OpenAI routes on the business plane: POST /v1/chat/completions and /v1/completions.

HTTP only: the serving layer (mindie_like.serving) validates, renders, runs the engine, shapes the answer and
records latency/token/outcome metrics; this module reads the guarded body, streams SSE or returns JSON, counts
received requests and turns the serving layer's ValidationFailure into MindIE's error body.
"""
from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from aiohttp import web

from ..serving import ChatServing, CompletionServing, ValidationFailure
from .context import ServingContext, get_context
from .errors import SERVICE_UNAVAILABLE, ApiError, error_response
from .guard import get_json

log = logging.getLogger("mindie_like.server.openai")


def build_serving(ctx: ServingContext) -> tuple[ChatServing, CompletionServing]:
    """The chat and completion serving objects of the loaded model, from the config's `models.<model_type>`."""
    cfg, opts, backend = ctx.config, ctx.model_options, ctx.backend
    template_path = str(ctx.chat_template_path) if ctx.chat_template_path else None
    limits = dict(max_input_len=cfg.deploy.maxInputTokenLen, max_seq_len=cfg.deploy.maxSeqLen,
                  max_iter_times=cfg.schedule.maxIterTimes, truncation=int(cfg.deploy.truncation),
                  token_timeout_s=float(cfg.ServerConfig.tokenTimeout) or None,
                  e2e_timeout_s=float(cfg.ServerConfig.e2eTimeout) or None)
    model_dir = backend.tokenizer_dir or backend.model_path
    chat = ChatServing.from_model(
        backend.engine, backend.tokenizer, ctx.model_name, model_type=backend.model_type,
        hf_config=backend.hf_config, tool_call_parser=opts.tool_call_options.tool_call_parser or None,
        chat_template_path=template_path, enable_reasoning=opts.enable_reasoning,
        lenient_recovery=opts.tool_call_options.lenient_recovery, strict_tools=opts.tool_call_options.strict,
        model_dir=model_dir, metrics=ctx.metrics, **limits)
    log.info("tool-call parser: %s; constrained decoding: %s", chat.family,
             "llguidance" if chat.guided is not None else "off")
    completion = CompletionServing(backend.engine, backend.tokenizer, ctx.model_name, options=chat.options,
                                   metrics=ctx.metrics)
    return chat, completion


async def _serve(request: web.Request, serving: Any) -> web.StreamResponse:
    ctx = get_context(request)
    if ctx.stopping:
        raise ApiError(503, "Service is stopping", SERVICE_UNAVAILABLE)
    body = await get_json(request)
    request_id = uuid.uuid4().hex[:16]
    ctx.metrics.request_received()
    try:
        if not serving.wants_stream(body):
            answer = await serving.create(body, request_id)
            return web.json_response(answer, dumps=lambda o: json.dumps(o, ensure_ascii=False))
        chunks = serving.stream(body, request_id)
        first = await chunks.__anext__()   # validation and engine refusal raise here, before any byte is sent
    except ValidationFailure as e:
        return error_response(e.status, e.message, e.error_type)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache", "X-Request-Id": request_id})
    try:
        await response.prepare(request)
        await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
    finally:
        await chunks.aclose()              # a client that went away aborts its engine requests
    await response.write_eof()
    return response


def add_openai_routes(app: web.Application, ctx: ServingContext) -> None:
    if ctx.engine is None:
        async def no_engine(request: web.Request) -> web.Response:
            raise ApiError(503, "No inference engine is loaded", SERVICE_UNAVAILABLE)
        for path in ("/v1/chat/completions", "/v1/completions"):
            app.router.add_post(path, no_engine)
        return
    if "openai_serving" not in ctx.extra:   # one set per daemon, shared by every listener
        ctx.extra["openai_serving"] = build_serving(ctx)
    chat, completion = ctx.extra["openai_serving"]

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        return await _serve(request, chat)

    async def completions(request: web.Request) -> web.StreamResponse:
        return await _serve(request, completion)

    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
