"""The one request handler every generating route uses (OpenAI and compat alike).

The serving object validates and answers; this turns that into HTTP: JSON, or a stream whose first chunk is
awaited before any byte is sent (so a validation failure or an engine refusal still gets its status and error
body), and whose generator is closed when the client goes away (which aborts the engine requests).
"""
from __future__ import annotations

import json
import uuid
from typing import Any, Optional

from aiohttp import web

from ..protocol.errors import ValidationFailure
from .context import get_context
from .errors import SERVICE_UNAVAILABLE, ApiError, error_response_for

SSE_TYPE = "text/event-stream; charset=utf-8"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


async def serve_request(request: web.Request, serving: Any, body: Any, *, content_type: str = SSE_TYPE,
                        headers: Optional[dict] = None) -> web.StreamResponse:
    """`serving` has wants_stream(body), create(body, request_id) and stream(body, request_id); every answer
    carries X-Request-Id (and `headers`)."""
    ctx = get_context(request)
    if ctx.stopping:
        raise ApiError(503, "Service is stopping", SERVICE_UNAVAILABLE)
    request_id = uuid.uuid4().hex[:16]
    headers = {"X-Request-Id": request_id, **(headers or {})}
    ctx.metrics.request_received()
    try:
        if not serving.wants_stream(body):
            answer = await serving.create(body, request_id)
            return web.json_response(answer, headers=headers, dumps=_dumps)
        chunks = serving.stream(body, request_id)
        first = await chunks.__anext__()     # validation and engine refusal raise here, before any byte is sent
    except ValidationFailure as e:
        return error_response_for(request.path, e.status, e.message, e.error_type, headers=headers)
    response = web.StreamResponse(headers={"Content-Type": content_type, "Cache-Control": "no-cache", **headers})
    try:
        await response.prepare(request)
        await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
    finally:
        await chunks.aclose()                # a client that went away aborts its engine requests
    await response.write_eof()
    return response


def no_engine_routes(app: web.Application, paths: tuple[str, ...], method: str = "POST") -> None:
    """Without an engine the generating routes exist and answer 503 (never a fake answer)."""
    async def no_engine(request: web.Request) -> web.Response:
        raise ApiError(503, "No inference engine is loaded", SERVICE_UNAVAILABLE)
    for path in paths:
        app.router.add_route(method, path, no_engine)
