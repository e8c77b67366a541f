"""The aiohttp applications of the three planes, grouped into listeners by (address, port).

Routes come from a table `{plane: (hook, ...)}`, each `hook(app, ctx)` adding one module's routes; the daemon's
table is `mindie_like.assembly.ROUTES` (the one place a route module is added).

Every business POST/PUT/PATCH passes the request guard first (body cap, JSON depth, JSON parse); routes read the
body with `await get_json(request)`. Errors anywhere become MindIE's `{"error", "error_type"}` body.
"""
from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

from aiohttp import web

from .context import CTX_KEY, ServingContext
from .errors import ApiError, error_response_for
from .guard import make_guard_middleware

log = logging.getLogger("mindie_like.server")

RouteHook = Callable[[web.Application, ServingContext], None]
RouteTable = Mapping[str, Sequence[RouteHook]]      # plane -> the hooks that add its routes

PLANES = ("business", "management", "metrics")


# -- middlewares -------------------------------------------------------------------------------------------
@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except ApiError as e:
        return error_response_for(request.path, e.status, e.message, e.error_type, headers=e.headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        msg = {404: "Not Found: no such route", 405: "Method Not Allowed"}.get(e.status, e.reason)
        return error_response_for(request.path, e.status, msg, headers={k: v for k, v in e.headers.items()
                                                                        if k.lower() in ("allow", "connection")})
    except (ConnectionResetError, OSError) as e:   # the client went away
        log.debug("client connection error on %s: %s", request.path, e)
        raise
    except Exception:   # never a traceback in the body
        log.exception("internal error on %s %s", request.method, request.path)
        return error_response_for(request.path, 500, "Internal error")


class ConnectionCap:
    """maxLinkNum: the first `limit` live connections are admitted; a request on any other connection gets 503
    with the error body and the connection is closed."""

    def __init__(self, limit: int):
        self.limit = limit
        self.admitted: set = set()

    @staticmethod
    def _alive(proto) -> bool:
        t = getattr(proto, "transport", None)
        return t is not None and not t.is_closing()

    def admit(self, proto) -> bool:
        if proto in self.admitted:
            return True
        self.admitted = {p for p in self.admitted if self._alive(p)}
        if len(self.admitted) < self.limit:
            self.admitted.add(proto)
            return True
        return False

    def middleware(self):
        @web.middleware
        async def connection_cap(request: web.Request, handler):
            if not self.admit(request.protocol):
                raise ApiError(503, f"Too many connections: the limit is {self.limit} (maxLinkNum)",
                               headers={"Connection": "close"})
            return await handler(request)
        return connection_cap


def _inflight_middleware(ctx: ServingContext):
    @web.middleware
    async def inflight(request: web.Request, handler):
        ctx.inflight += 1
        try:
            return await handler(request)
        finally:
            ctx.inflight -= 1
    return inflight


def _stopping_middleware(ctx: ServingContext):
    @web.middleware
    async def stopping(request: web.Request, handler):
        if ctx.stopping:
            raise ApiError(503, "Service is stopping", headers={"Connection": "close"})
        return await handler(request)
    return stopping


# -- listeners ---------------------------------------------------------------------------------------------
@dataclass
class Listener:
    host: str
    port: int
    planes: list[str]
    app: web.Application
    ssl_context: Optional[ssl.SSLContext] = None
    cap: Optional[ConnectionCap] = None
    runner: Optional[web.AppRunner] = field(default=None, repr=False)

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context else "http"


def plane_addresses(ctx: ServingContext) -> dict[str, tuple[str, int]]:
    s = ctx.config.ServerConfig
    return {"business": (s.ipAddress, s.port),
            "management": (s.managementIpAddress, s.managementPort),
            "metrics": (s.managementIpAddress, s.metricsPort)}


def group_planes(ctx: ServingContext) -> list[tuple[str, int, list[str]]]:
    groups: dict[tuple[str, int], list[str]] = {}
    for plane, addr in plane_addresses(ctx).items():
        groups.setdefault(addr, []).append(plane)
    return [(h, p, planes) for (h, p), planes in groups.items()]


def build_app(ctx: ServingContext, planes: list[str], routes: RouteTable
              ) -> tuple[web.Application, Optional[ConnectionCap]]:
    s = ctx.config.ServerConfig
    max_bytes = s.maxRequestLength * 1024 * 1024
    middlewares = [_inflight_middleware(ctx), error_middleware]
    cap = None
    if "business" in planes:
        cap = ConnectionCap(s.maxLinkNum)
        guard = make_guard_middleware(max_bytes, s.maxJsonDepth, s.requestReadTimeout)
        middlewares += [cap.middleware(), _stopping_middleware(ctx), guard]
    app = web.Application(middlewares=middlewares, client_max_size=max_bytes + 1)
    app[CTX_KEY] = ctx
    for plane in PLANES:
        if plane in planes:
            for hook in routes.get(plane, ()):
                hook(app, ctx)
    return app, cap


def build_listeners(ctx: ServingContext, routes: RouteTable,
                    ssl_factory: Optional[Callable[[str], ssl.SSLContext]] = None) -> list[Listener]:
    """One listener per distinct (address, port); a listener serving several planes uses the TLS set of the first
    of business, management, metrics it serves."""
    out = []
    for host, port, planes in group_planes(ctx):
        app, cap = build_app(ctx, planes, routes)
        ssl_ctx = ssl_factory(planes[0]) if ssl_factory else None
        out.append(Listener(host, port, planes, app, ssl_ctx, cap))
    return out
