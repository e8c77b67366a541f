"""OpenAI's Responses API on the business plane: POST /v1/responses, GET and DELETE /v1/responses/{response_id}.

HTTP only: `ctx.servings.responses` (serving/responses.py, built once by mindie_like.assembly) does the work and
server.handler answers. Errors on these paths carry OpenAI's body `{"error": {"message", "type", "param",
"code"}}`; a refused request is 400 (not MindIE's 422).
"""
from __future__ import annotations

import json

from aiohttp import web

from ..protocol.api_common import param_of
from ..protocol.errors import ValidationFailure
from .context import ServingContext
from .errors import ApiError, register_error_shape
from .guard import get_json
from .handler import no_engine_routes, serve_request

PATH = "/v1/responses"
ITEM_PATH = PATH + "/{response_id}"
CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large", 408: "request_timeout",
         429: "rate_limit_exceeded", 503: "service_unavailable"}


def openai_error(status: int, message: str) -> tuple[int, dict]:
    status = 400 if status == 422 else status
    kind = "invalid_request_error" if status < 500 and status != 424 else "server_error"
    code = "model_not_found" if status == 404 and message.startswith("model:") else CODES.get(status)
    return status, {"error": {"message": message, "type": kind, "param": param_of(message), "code": code}}


register_error_shape(PATH, openai_error)


def add_responses_routes(app: web.Application, ctx: ServingContext) -> None:
    if ctx.servings is None or ctx.servings.responses is None:
        no_engine_routes(app, (PATH,))
        no_engine_routes(app, (ITEM_PATH,), "GET")
        no_engine_routes(app, (ITEM_PATH,), "DELETE")
        return
    serving = ctx.servings.responses

    async def create(request: web.Request) -> web.StreamResponse:
        return await serve_request(request, serving, await get_json(request))

    def stored(action):
        async def handler(request: web.Request) -> web.Response:
            try:
                answer = action(request.match_info["response_id"])
            except ValidationFailure as e:
                raise ApiError(e.status, e.message, e.error_type) from None
            return web.json_response(answer, dumps=lambda o: json.dumps(o, ensure_ascii=False))
        return handler

    app.router.add_post(PATH, create)
    app.router.add_get(ITEM_PATH, stored(serving.retrieve))
    app.router.add_delete(ITEM_PATH, stored(serving.delete))
