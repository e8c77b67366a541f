"""Connections from accept to close: counted, bounded, and answered in MindIE's error shape when malformed.

- **Counted from accept.** aiohttp sees a TLS connection only once its handshake is done, so a client that sends
  four bytes of a ClientHello and stops held a file descriptor for asyncio's default 60 s without being counted
  anywhere. Here each TLS listener wraps asyncio's own `SSLProtocol` so that a `ConnectionGate` counts the
  connection from the moment it is accepted until it closes; one accepted beyond the gate's limit is closed at
  once, and the handshake has its own short timeout (`TLS_HANDSHAKE_TIMEOUT_S`). Each listener has its own gate,
  so a flood on the business port leaves the management and metrics ports their room.
- **Malformed HTTP.** aiohttp answers a request it cannot parse (a 100 KB header, a bad request line) with a
  plain-text 400 that quotes the client's bytes and logs a traceback with them at ERROR. `answer_parse_errors`
  makes such a connection answer with `{"error", "error_type"}`, naming only the kind of fault, and log one line
  without client bytes, at most once per `PARSE_LOG_INTERVAL_S` per kind (with the count of the ones not logged).
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from asyncio import sslproto
from typing import Callable, Optional

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .errors import error_response

log = logging.getLogger("mindie_like.server")

TLS_HANDSHAKE_TIMEOUT_S = 10.0
PARSE_LOG_INTERVAL_S = 10.0
SIDE_PLANE_CONNECTIONS = 64        # management / metrics listeners: health checks and scrapers, not crowds


class ConnectionGate:
    """At most `limit` connections of one listener open at once, counted from accept (handshakes included)."""

    def __init__(self, name: str, limit: int):
        self.name = name
        self.limit = max(1, int(limit))
        self.open = 0
        self.refused = 0
        self._last_warning = 0.0

    def enter(self) -> bool:
        if self.open >= self.limit:
            self.refused += 1
            now = time.monotonic()
            if now - self._last_warning >= PARSE_LOG_INTERVAL_S:
                self._last_warning = now
                log.warning("%s listener: %d connections open (the limit): closing new ones at accept "
                            "(%d so far)", self.name, self.limit, self.refused)
            return False
        self.open += 1
        return True

    def leave(self) -> None:
        self.open -= 1


def gate_limit(planes: list[str], max_link_num: int) -> int:
    """The business listener keeps room for maxLinkNum clients plus as many (at least 64) being answered 503 or
    shaking hands; a listener of only management / metrics gets SIDE_PLANE_CONNECTIONS."""
    if "business" in planes:
        return max_link_num + max(SIDE_PLANE_CONNECTIONS, max_link_num)
    return SIDE_PLANE_CONNECTIONS


class _GatedTLSProtocol(sslproto.SSLProtocol):
    """asyncio's server-side TLS protocol, counted by a gate from connection_made (accept) to connection_lost."""

    def __init__(self, gate: ConnectionGate, loop, app_protocol, sslcontext, handshake_timeout: float):
        super().__init__(loop, app_protocol, sslcontext, None, server_side=True,
                         ssl_handshake_timeout=handshake_timeout)
        self._gate = gate
        self._counted = False

    def connection_made(self, transport):
        if not self._gate.enter():
            transport.abort()
            return
        self._counted = True
        super().connection_made(transport)

    def connection_lost(self, exc):
        if not self._counted:
            return
        self._counted = False
        self._gate.leave()
        super().connection_lost(exc)


class GatedTLSSite(web.TCPSite):
    """A TCPSite whose TLS connections pass a ConnectionGate and a short handshake timeout; aiohttp's request
    handlers answer parse errors in the API's error shape."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, ssl_context, gate: ConnectionGate,
                 backlog: int = 128, handshake_timeout: float = TLS_HANDSHAKE_TIMEOUT_S):
        super().__init__(runner, host, port, ssl_context=ssl_context, backlog=backlog, reuse_address=True)
        self.gate = gate
        self.handshake_timeout = handshake_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)        # registers the site; TCPSite.start would bind its own server
        loop = asyncio.get_running_loop()
        server = self._runner.server

        def protocol():
            app = answer_parse_errors(server())
            if self._ssl_context is None:
                return app
            return _GatedTLSProtocol(self.gate, loop, app, self._ssl_context, self.handshake_timeout)

        self._server = await loop.create_server(protocol, self._host, self._port, backlog=self._backlog,
                                                reuse_address=True)
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port


def unbindable(server_config) -> list[str]:
    """One line per plane address (ServerConfig) that cannot be bound now: checked before the model loads, so a
    port in use is reported in a second, not after minutes of loading."""
    from .lifecycle import PLANE_PORT_KEYS
    s = server_config
    addresses = {PLANE_PORT_KEYS["business"]: (s.ipAddress, s.port),
                 PLANE_PORT_KEYS["management"]: (s.managementIpAddress, s.managementPort),
                 PLANE_PORT_KEYS["metrics"]: (s.managementIpAddress, s.metricsPort)}
    lines, seen = [], set()
    for key, (host, port) in addresses.items():
        if (host, port) in seen:
            continue
        seen.add((host, port))
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, _, _, _, addr = infos[0]
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the listener will
                s.bind(addr)
        except OSError as e:
            lines.append(f"ServerConfig.{key}: cannot listen on {host}:{port} ({e.strerror or e})")
    return lines


# -- malformed HTTP -----------------------------------------------------------------------------------------
_PARSE_FAULTS = {   # aiohttp's exception class name -> what the client is told (never its bytes)
    "LineTooLong": "a header or the request line is too long",
    "BadStatusLine": "malformed request line",
    "BadHttpMessage": "malformed HTTP message",
    "BadHttpMethod": "invalid HTTP method",
    "InvalidHeader": "invalid header",
    "InvalidURLError": "invalid URL",
    "ContentLengthError": "invalid Content-Length",
    "TransferEncodingError": "invalid Transfer-Encoding",
}


class _ParseErrorLog:
    """One line per kind of fault at most every PARSE_LOG_INTERVAL_S, with the count of the lines held back."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.last: dict[str, float] = {}
        self.held: dict[str, int] = {}

    def note(self, kind: str, status: int, peer: Optional[str]) -> None:
        now = self.clock()
        if now - self.last.get(kind, -PARSE_LOG_INTERVAL_S) < PARSE_LOG_INTERVAL_S:
            self.held[kind] = self.held.get(kind, 0) + 1
            return
        held = self.held.pop(kind, 0)
        self.last[kind] = now
        log.warning("malformed HTTP request from %s answered %d: %s%s", peer or "?", status, kind,
                    f" ({held} more since the last line)" if held else "")


PARSE_ERROR_LOG = _ParseErrorLog()


class _ErrorBodyRequestHandler(RequestHandler):
    """aiohttp's RequestHandler whose error answer is the API's error body, naming only the kind of fault."""
    __slots__ = ()

    def handle_error(self, request, status: int = 500, exc: Optional[BaseException] = None, message=None):
        kind = _PARSE_FAULTS.get(type(exc).__name__, "malformed HTTP request" if status < 500 else "internal error")
        PARSE_ERROR_LOG.note(kind, status, getattr(request, "remote", None))
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had started: the connection is closed instead")
        resp = error_response(status, f"Bad Request: {kind}" if status < 500 else "Internal error")
        resp.force_close()
        return resp


def answer_parse_errors(handler: RequestHandler) -> RequestHandler:
    """`handler` (made by aiohttp's Server, with its settings) answering errors in the API's shape. The class is
    swapped rather than the handler rebuilt: RequestHandler has __slots__, and the subclass adds none."""
    handler.__class__ = _ErrorBodyRequestHandler
    return handler
