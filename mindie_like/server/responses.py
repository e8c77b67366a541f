"""OpenAI's Responses API on the business plane: POST /v1/responses, GET and DELETE /v1/responses/{response_id}.

HTTP only (serving/responses.py does the work). Errors on these paths carry OpenAI's body
`{"error": {"message", "type", "param", "code"}}`; a refused request is 400 (not MindIE's 422).
"""
from __future__ import annotations

from aiohttp import web

from ..protocol.api_common import param_of
from ..protocol.errors import ValidationFailure
from ..serving.response_store import ResponseStore
from ..serving.responses import ResponsesServing
from .api_routes import add_no_engine_routes, json_answer, new_request_id, refused, serve_generation
from .context import ServingContext
from .errors import register_error_shape

PATH = "/v1/responses"
REQUEST_ID_HEADER = "x-request-id"
CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large", 408: "request_timeout",
         429: "rate_limit_exceeded", 503: "service_unavailable"}


def openai_error(status: int, message: str) -> tuple[int, dict]:
    status = 400 if status == 422 else status
    kind = "invalid_request_error" if status < 500 and status != 424 else "server_error"
    code = "model_not_found" if status == 404 and message.startswith("model:") else CODES.get(status)
    return status, {"error": {"message": message, "type": kind, "param": param_of(message), "code": code}}


register_error_shape(PATH, openai_error)


def responses_serving(ctx: ServingContext) -> ResponsesServing:
    """One per daemon, shared by every listener (its store too)."""
    if "responses_serving" not in ctx.extra:
        from .openai import build_serving
        if "openai_serving" not in ctx.extra:
            ctx.extra["openai_serving"] = build_serving(ctx)
        chat, _ = ctx.extra["openai_serving"]
        store = ResponseStore(ctx.config.ServerConfig.responsesStoreSize)
        ctx.extra["responses_serving"] = ResponsesServing(chat, store, metrics=ctx.metrics)
    return ctx.extra["responses_serving"]


def add_responses_routes(app: web.Application, ctx: ServingContext) -> None:
    item = PATH + "/{response_id}"
    if ctx.engine is None:
        add_no_engine_routes(app, [("POST", PATH), ("GET", item), ("DELETE", item)])
        return
    serving = responses_serving(ctx)

    async def create(request: web.Request) -> web.StreamResponse:
        return await serve_generation(request, serving, REQUEST_ID_HEADER)

    async def retrieve(request: web.Request) -> web.Response:
        try:
            return json_answer(serving.retrieve(request.match_info["response_id"]), REQUEST_ID_HEADER,
                               new_request_id())
        except ValidationFailure as e:
            raise refused(e) from None

    async def delete(request: web.Request) -> web.Response:
        try:
            return json_answer(serving.delete(request.match_info["response_id"]), REQUEST_ID_HEADER,
                               new_request_id())
        except ValidationFailure as e:
            raise refused(e) from None

    app.router.add_post(PATH, create)
    app.router.add_get(item, retrieve)
    app.router.add_delete(item, delete)
