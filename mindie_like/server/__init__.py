"""mindie_like.server: the aiohttp planes, TLS, request guard, errors, metrics.

Public surface for later route modules:
    register_business_routes(hook)      hook(app, ctx) adds business routes (call before the daemon starts)
    get_context(request) -> ServingContext   (config, model_name, backend.tokenizer, engine, metrics, model_options)
    get_json(request)                   the guarded, parsed JSON body
    ApiError(status, message[, error_type]), error_response(...), sse_error_event(...)
    Metrics: ctx.metrics.request_received() / request_success() / request_failed() / add_tokens(...) /
             observe_ttft(s) / observe_token_time(s) / observe_e2e(s)
"""
from .app import Listener, build_listeners, business_route_hooks, register_business_routes
from .context import CTX_KEY, Backend, ServingContext, get_context
from .errors import (GENERATION_ERROR, INCOMPLETE_GENERATION, INPUT_VALIDATION_ERROR, SERVICE_UNAVAILABLE, ApiError,
                     error_body, error_response, sse_error_event)
from .guard import get_json
from .metrics import Metrics

__all__ = [
    "ApiError", "Backend", "CTX_KEY", "GENERATION_ERROR", "INCOMPLETE_GENERATION", "INPUT_VALIDATION_ERROR",
    "Listener", "Metrics", "SERVICE_UNAVAILABLE", "ServingContext", "build_listeners", "business_route_hooks",
    "error_body", "error_response", "get_context", "get_json", "register_business_routes", "sse_error_event",
]
