"""mindie_like.server: the aiohttp planes, TLS, request guard, errors, metrics.

Public surface for route modules (a module exposes `add_<name>_routes(app, ctx)` and is listed once in
mindie_like.assembly.ROUTES):
    get_context(request) -> ServingContext   (config, model_name, backend.tokenizer, engine, metrics, model_options)
    get_json(request)                   the guarded, parsed JSON body
    ApiError(status, message[, error_type]), error_response(...)
    serve_request(request, serving, body)   the generating routes' handler (server/handler.py)
    Metrics: ctx.metrics.request_received() / request_success() / request_failed() / add_tokens(...) /
             observe_ttft(s) / observe_token_time(s) / observe_e2e(s)
"""
from .app import PLANES, Listener, RouteHook, RouteTable, build_listeners
from .context import CTX_KEY, Backend, Servings, ServingContext, get_context
from .errors import (GENERATION_ERROR, INCOMPLETE_GENERATION, INPUT_VALIDATION_ERROR, SERVICE_UNAVAILABLE, ApiError,
                     error_body, error_response)
from .guard import get_json
from .handler import serve_request
from .lifecycle import Server
from .metrics import Metrics

__all__ = [
    "ApiError", "Backend", "CTX_KEY", "GENERATION_ERROR", "INCOMPLETE_GENERATION", "INPUT_VALIDATION_ERROR",
    "Listener", "Metrics", "PLANES", "RouteHook", "RouteTable", "SERVICE_UNAVAILABLE", "Server", "Servings",
    "ServingContext", "build_listeners", "error_body", "error_response", "get_context", "get_json",
    "serve_request",
]
