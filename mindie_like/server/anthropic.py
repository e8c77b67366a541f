"""Anthropic's Messages API on the business plane: POST /v1/messages and POST /v1/messages/count_tokens.

HTTP only: `ctx.servings.messages` (serving/anthropic.py, built once by mindie_like.assembly) does the work and
server.handler answers. Clients' `x-api-key` and `anthropic-version` headers are accepted and not checked: mutual
TLS authenticates them. Errors on these paths carry Anthropic's body `{"type": "error", "error": {"type",
"message"}}`; a refused request is 400 (not MindIE's 422).
"""
from __future__ import annotations

import json
import uuid

from aiohttp import web

from ..protocol.errors import ValidationFailure
from .context import ServingContext, get_context
from .errors import SERVICE_UNAVAILABLE, ApiError, register_error_shape
from .guard import get_json
from .handler import no_engine_routes, serve_request

PATH = "/v1/messages"
COUNT_PATH = PATH + "/count_tokens"
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 424: "api_error", 429: "rate_limit_error",
               503: "overloaded_error"}


def anthropic_error(status: int, message: str) -> tuple[int, dict]:
    status = 400 if status == 422 else status
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return status, {"type": "error", "error": {"type": kind, "message": message}}


register_error_shape(PATH, anthropic_error)


def add_anthropic_routes(app: web.Application, ctx: ServingContext) -> None:
    if ctx.servings is None or ctx.servings.messages is None:
        no_engine_routes(app, (PATH, COUNT_PATH))
        return
    serving = ctx.servings.messages

    async def create(request: web.Request) -> web.StreamResponse:
        return await serve_request(request, serving, await get_json(request))

    async def count_tokens(request: web.Request) -> web.Response:
        if get_context(request).stopping:
            raise ApiError(503, "Service is stopping", SERVICE_UNAVAILABLE)
        try:
            answer = await serving.count_tokens(await get_json(request), uuid.uuid4().hex[:16])
        except ValidationFailure as e:
            raise ApiError(e.status, e.message, e.error_type) from None
        return web.json_response(answer, dumps=lambda o: json.dumps(o, ensure_ascii=False))

    app.router.add_post(PATH, create)
    app.router.add_post(COUNT_PATH, count_tokens)
