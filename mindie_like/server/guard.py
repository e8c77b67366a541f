"""The request guard of the business plane: body size cap, JSON depth cap, JSON parsing.

The guard middleware runs on every POST/PUT/PATCH of the business plane before the route: a body over
`maxRequestLength` MB → 413, a body still incomplete after `requestReadTimeout` s → 408, any object/array nested deeper than `maxJsonDepth` → 422 naming both, a body that is
not JSON → 422. Routes then take the parsed body with `await get_json(request)`.

Depth is counted as MindIE counts it: the top-level value is depth 0 and each object or array inside another is
one deeper. The check never recurses: strings are cut out with one regex, the remaining brackets are counted with
numpy. orjson (which refuses, rather than crashes on, input nested beyond 1024 levels) parses the body and the
parsed value is measured with an explicit stack.
"""
from __future__ import annotations

import asyncio
import re
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from .errors import ApiError
from .memory import LARGE_BODY_BYTES, TRIMMER

# the parsed body is kept on the request (web.RequestKey on aiohttp >= 3.13, a plain string key before)
JSON_KEY = web.RequestKey("mindie_like_json_body", object) if hasattr(web, "RequestKey") else "mindie_like.json_body"
GUARDED_METHODS = frozenset({"POST", "PUT", "PATCH"})

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")
_CHUNK = 1 << 20
_CONTAINERS = (dict, list)
THREAD_PARSE_BYTES = 256 * 1024     # bodies larger than this are parsed off the event loop


def json_max_depth(raw: bytes) -> int:
    """Deepest object/array of a JSON text: top-level container 0, one inside it 1, ...; -1 when there is none.

    Works on any bytes (valid JSON or not) in linear time and constant stack."""
    if b"[" not in raw and b"{" not in raw:
        return -1
    stripped = _STRING.sub(b"", raw) if b'"' in raw else raw
    brackets = stripped.translate(None, _NOT_BRACKET)
    if not brackets:
        return -1
    best, level = -1, 0
    for i in range(0, len(brackets), _CHUNK):
        a = np.frombuffer(brackets, dtype=np.uint8, count=min(_CHUNK, len(brackets) - i), offset=i)
        step = np.where((a == ord("[")) | (a == ord("{")), 1, -1).astype(np.int32)
        run = np.cumsum(step, dtype=np.int64) + level
        best = max(best, int(run.max()) - 1)
        level = int(run[-1])
    return best


def value_max_depth(value: Any, stop_above: int | None = None) -> int:
    """Deepest dict/list of a parsed value (same counting as json_max_depth), walked with an explicit stack."""
    best = -1
    level = [value] if type(value) in _CONTAINERS else []
    # breadth-first, one level at a time: no recursion, and a level is a plain list
    while level:
        best += 1
        if stop_above is not None and best > stop_above:
            return best
        nxt = []
        for v in level:
            nxt.extend([c for c in (v.values() if type(v) is dict else v) if type(c) in _CONTAINERS])
        level = nxt
    return best


def _too_deep(depth: int, limit: int) -> ApiError:
    return ApiError(422, f"JSON nesting depth {depth} exceeds the limit of {limit} (maxJsonDepth)")


def parse_json(raw: bytes, depth_limit: int) -> Any:
    """Parses a request body: 422 when it is not JSON or nests deeper than `depth_limit`.

    orjson refuses (does not crash on) input nested beyond 1024 levels; such a body is measured with the
    bracket scanner so the answer names its depth."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        if "depth" in str(e):
            depth = json_max_depth(raw)
            if depth > depth_limit:
                raise _too_deep(depth, depth_limit) from None
        raise ApiError(422, "Failed to parse request context to json") from None
    if value_max_depth(value, depth_limit) > depth_limit:
        raise _too_deep(value_max_depth(value), depth_limit)
    return value


async def read_body(request: web.Request, max_bytes: int, timeout_s: float) -> bytes:
    """The whole body, refusing with 413 as soon as it is known to be larger than `max_bytes`, and with 408 when it
    has not all arrived within `timeout_s` seconds (a slow-body client cannot hold a connection for ever)."""
    too_big = ApiError(413, f"Request body is larger than the limit of {max_bytes} bytes (maxRequestLength)",
                       headers={"Connection": "close"})
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_big

    async def read_all() -> bytes:
        chunks, size = [], 0
        while True:
            chunk = await request.content.read(65536)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > max_bytes:
                raise too_big
            chunks.append(chunk)

    try:
        return await asyncio.wait_for(read_all(), timeout_s)
    except asyncio.TimeoutError:       # TimeoutError itself from 3.11 on
        raise ApiError(408, f"The request body did not arrive within {timeout_s:g} s (requestReadTimeout)",
                       headers={"Connection": "close"}) from None


def make_guard_middleware(max_bytes: int, depth_limit: int, read_timeout_s: float):
    @web.middleware
    async def json_guard(request: web.Request, handler):
        if request.method not in GUARDED_METHODS:
            return await handler(request)
        raw = await read_body(request, max_bytes, read_timeout_s)
        size = len(raw)
        try:
            if not raw.strip():
                raise ApiError(422, "Failed to parse request context to json: the body is empty")
            if size > THREAD_PARSE_BYTES:
                request[JSON_KEY] = await asyncio.to_thread(parse_json, raw, depth_limit)
            else:
                request[JSON_KEY] = parse_json(raw, depth_limit)
            del raw
            return await handler(request)
        finally:
            if size >= LARGE_BODY_BYTES:     # what such a body built is freed: give it back to the system
                TRIMMER.trim_soon()
    return json_guard


async def get_json(request: web.Request) -> Any:
    """The request's parsed JSON body (already checked by the guard middleware)."""
    if JSON_KEY in request:
        return request[JSON_KEY]
    from .context import get_context
    ctx = get_context(request.app)
    s = ctx.config.ServerConfig
    raw = await read_body(request, s.maxRequestLength * 1024 * 1024, s.requestReadTimeout)
    request[JSON_KEY] = parse_json(raw, s.maxJsonDepth)
    return request[JSON_KEY]
