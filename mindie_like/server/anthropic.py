"""Anthropic's Messages API on the business plane: POST /v1/messages and POST /v1/messages/count_tokens.

HTTP only (serving/anthropic.py does the work). Clients' `x-api-key` and `anthropic-version` headers are accepted
and not checked: mutual TLS authenticates them. Errors on these paths carry Anthropic's body
`{"type": "error", "error": {"type", "message"}}`; a refused request is 400 (not MindIE's 422).
"""
from __future__ import annotations

from aiohttp import web

from ..protocol.errors import ValidationFailure
from ..serving.anthropic import MessagesServing
from .api_routes import add_no_engine_routes, json_answer, new_request_id, refused, serve_generation
from .context import ServingContext, get_context
from .errors import SERVICE_UNAVAILABLE, ApiError, register_error_shape
from .guard import get_json

PATH = "/v1/messages"
COUNT_PATH = PATH + "/count_tokens"
REQUEST_ID_HEADER = "request-id"
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 424: "api_error", 429: "rate_limit_error",
               503: "overloaded_error"}


def anthropic_error(status: int, message: str) -> tuple[int, dict]:
    status = 400 if status == 422 else status
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return status, {"type": "error", "error": {"type": kind, "message": message}}


register_error_shape(PATH, anthropic_error)


def messages_serving(ctx: ServingContext) -> MessagesServing:
    """One per daemon, shared by every listener (and its thinking-signature key with them)."""
    if "messages_serving" not in ctx.extra:
        from .openai import build_serving
        if "openai_serving" not in ctx.extra:
            ctx.extra["openai_serving"] = build_serving(ctx)
        chat, _ = ctx.extra["openai_serving"]
        ctx.extra["messages_serving"] = MessagesServing(chat, metrics=ctx.metrics)
    return ctx.extra["messages_serving"]


def add_anthropic_routes(app: web.Application, ctx: ServingContext) -> None:
    if ctx.engine is None:
        add_no_engine_routes(app, [("POST", PATH), ("POST", COUNT_PATH)])
        return
    serving = messages_serving(ctx)

    async def create(request: web.Request) -> web.StreamResponse:
        return await serve_generation(request, serving, REQUEST_ID_HEADER)

    async def count_tokens(request: web.Request) -> web.Response:
        if get_context(request).stopping:
            raise ApiError(503, "Service is stopping", SERVICE_UNAVAILABLE)
        request_id = new_request_id()
        try:
            answer = await serving.count_tokens(await get_json(request), request_id)
        except ValidationFailure as e:
            raise refused(e) from None
        return json_answer(answer, REQUEST_ID_HEADER, request_id)

    app.router.add_post(PATH, create)
    app.router.add_post(COUNT_PATH, count_tokens)
