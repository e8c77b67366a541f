"""The OpenAI routes on the business plane: POST /v1/chat/completions and /v1/completions.

HTTP only: the serving layer (mindie_like.serving) validates, renders, runs the engine, shapes the answer and
records latency/token/outcome metrics; server.handler reads nothing but the guarded body, streams SSE or returns
JSON, counts received requests and turns the serving layer's ValidationFailure into MindIE's error body. The
serving objects are the context's (`ctx.servings`, built once by mindie_like.assembly).
"""
from __future__ import annotations

from aiohttp import web

from .context import ServingContext
from .guard import get_json
from .handler import no_engine_routes, serve_request

OPENAI_PATHS = ("/v1/chat/completions", "/v1/completions")


def add_openai_routes(app: web.Application, ctx: ServingContext) -> None:
    if ctx.servings is None:
        no_engine_routes(app, OPENAI_PATHS)
        return
    chat, completion = ctx.servings.chat, ctx.servings.completion

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        return await serve_request(request, chat, await get_json(request))

    async def completions(request: web.Request) -> web.StreamResponse:
        return await serve_request(request, completion, await get_json(request))

    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
