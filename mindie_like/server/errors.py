"""MindIE's error body `{"error": "<message>", "error_type": "<type>"}` as an HTTP response (the table of
error types per status is protocol/errors.py's).

    from mindie_like.server.errors import ApiError, error_response
    raise ApiError(422, "temperature: -1 is not >= 0")         # the middleware turns it into the error body
    return error_response(503, "Service is stopping")           # or build the response directly
"""
from __future__ import annotations

from typing import Callable, Optional

import orjson
from aiohttp import web

from ..protocol.errors import (ERROR_TYPES, GENERATION_ERROR, INCOMPLETE_GENERATION, INPUT_VALIDATION_ERROR,
                               SERVICE_UNAVAILABLE, error_body, error_type_for)

__all__ = ["ApiError", "ERROR_TYPES", "GENERATION_ERROR", "INCOMPLETE_GENERATION", "INPUT_VALIDATION_ERROR",
           "SERVICE_UNAVAILABLE", "error_body", "error_response", "error_response_for", "error_type_for",
           "register_error_shape"]


def error_response(status: int, message: str, error_type: Optional[str] = None, *,
                   headers: Optional[dict] = None) -> web.Response:
    """A JSON response with MindIE's error body."""
    body = orjson.dumps(error_body(message, error_type or error_type_for(status)))
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


# Routes of other APIs answer errors in their API's own body: path prefix -> shape(status, message) ->
# (status, body). Registered by the route modules (server/responses.py, server/anthropic.py).
ErrorShape = Callable[[int, str], tuple[int, dict]]
_ERROR_SHAPES: dict[str, ErrorShape] = {}


def register_error_shape(path_prefix: str, shape: ErrorShape) -> None:
    _ERROR_SHAPES[path_prefix] = shape


def error_response_for(path: str, status: int, message: str, error_type: Optional[str] = None, *,
                       headers: Optional[dict] = None) -> web.Response:
    """The error response a route answers: its API's body where one is registered for the path, else MindIE's."""
    for prefix, shape in _ERROR_SHAPES.items():
        if path == prefix or path.startswith(prefix + "/"):
            status, body = shape(status, message)
            return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                                headers=headers)
    return error_response(status, message, error_type, headers=headers)


class ApiError(Exception):
    """Raise from a handler; the error middleware answers with the MindIE error body."""

    def __init__(self, status: int, message: str, error_type: Optional[str] = None, *,
                 headers: Optional[dict] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or error_type_for(status)
        self.headers = headers

    def response(self) -> web.Response:
        return error_response(self.status, self.message, self.error_type, headers=self.headers)
