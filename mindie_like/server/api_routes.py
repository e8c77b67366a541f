"""What the Responses and Messages route modules share: answering one generation request as JSON or as
server-sent events from a serving/api_bridge.ChatBridge, with the request counted in the metrics and a refusal
raised as ApiError (the error middleware writes it in the route's API shape: server/errors.register_error_shape)."""
from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web

from ..protocol.errors import ValidationFailure
from .context import get_context
from .errors import SERVICE_UNAVAILABLE, ApiError
from .guard import get_json


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


def json_answer(obj: Any, request_id_header: str, request_id: str, status: int = 200) -> web.Response:
    return web.json_response(obj, status=status, dumps=lambda o: json.dumps(o, ensure_ascii=False),
                             headers={request_id_header: request_id})


def refused(e: ValidationFailure) -> ApiError:
    return ApiError(e.status, e.message, e.error_type)


async def serve_generation(request: web.Request, serving, request_id_header: str) -> web.StreamResponse:
    ctx = get_context(request)
    if ctx.stopping:
        raise ApiError(503, "Service is stopping", SERVICE_UNAVAILABLE)
    body = await get_json(request)
    request_id = new_request_id()
    ctx.metrics.request_received()
    try:
        if not serving.wants_stream(body):
            return json_answer(await serving.create(body, request_id), request_id_header, request_id)
        events = serving.stream(body, request_id)
        first = await events.__anext__()   # validation and engine refusal raise here, before any byte is sent
    except ValidationFailure as e:
        raise refused(e) from None
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache", request_id_header: request_id})
    try:
        await response.prepare(request)
        await response.write(first)
        async for chunk in events:
            await response.write(chunk)
    finally:
        await events.aclose()              # a client that went away aborts its engine request
    await response.write_eof()
    return response


def add_no_engine_routes(app: web.Application, routes: list[tuple[str, str]]) -> None:
    async def no_engine(request: web.Request) -> web.Response:
        raise ApiError(503, "No inference engine is loaded", SERVICE_UNAVAILABLE)
    for method, path in routes:
        app.router.add_route(method, path, no_engine)
