"""Server: the planes' listeners over one ServingContext, and the three ways serving ends.

    server = Server(ctx, routes, ssl_factory)
    await server.start()          # binds every listener (ListenError names the config key of a port in use)
    ...                           # a stop signal, or a tensor-parallel failure
    await server.fail(reason)     # only after a failure: 503 at once, in-flight requests answered, then linger
    await server.drain()          # stop accepting, give in-flight requests the grace period, abort the rest
    await server.stop()           # close the listeners, shut the engine down, close the model runner
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Callable, Optional

from aiohttp import web

from .app import Listener, RouteTable, build_listeners
from .connections import TLS_HANDSHAKE_TIMEOUT_S, ConnectionGate, GatedTLSSite, gate_limit
from .memory import TRIMMER
from .context import ServingContext

log = logging.getLogger("mindie_like.server")

FAILURE_LINGER_S = 2.0    # after a tensor-parallel rank fails: /health answers 503 this long before the exit
PLANE_PORT_KEYS = {"business": "port", "management": "managementPort", "metrics": "metricsPort"}


class ListenError(Exception):
    """A listener could not bind: `str()` is the operator's line (the ServerConfig key, the address, why)."""


class Server:
    def __init__(self, ctx: ServingContext, routes: RouteTable,
                 ssl_factory: Optional[Callable[[str], ssl.SSLContext]] = None):
        self.ctx = ctx
        self.routes, self.ssl_factory = routes, ssl_factory
        self.listeners: list[Listener] = []

    @property
    def grace(self) -> float:
        return float(self.ctx.config.ServerConfig.shutdownGracePeriod)

    async def start(self) -> None:
        """Builds the listeners (the TLS contexts are made here: a bad certificate raises ConfigError) and binds
        each; `stop()` is still needed when this raises."""
        self.listeners = build_listeners(self.ctx, self.routes, self.ssl_factory)
        self._trimmer = asyncio.get_running_loop().create_task(TRIMMER.trim_when_grown())   # server/memory.py
        backlog = max(128, self.ctx.config.ServerConfig.maxLinkNum)
        for ls in self.listeners:
            try:
                await self._start_listener(ls, backlog)
            except OSError as e:
                key = PLANE_PORT_KEYS[ls.planes[0]]
                raise ListenError(f"ServerConfig.{key}: cannot listen on {ls.host}:{ls.port} "
                                  f"({e.strerror or e})") from e
            log.info("%s plane%s listening on %s://%s:%d", "+".join(ls.planes), "s" if len(ls.planes) > 1 else "",
                     ls.scheme, ls.host, ls.port)

    async def _start_listener(self, ls: Listener, backlog: int) -> None:
        # shutdown_timeout: what requests still running after the grace period get to wind down once cancelled.
        # keepalive_timeout bounds the wait for a request's headers (from the connection or the previous answer) as
        # well as idle keep-alive connections: a client sending its headers a byte at a time is dropped after it
        ls.runner = web.AppRunner(ls.app, handle_signals=False, access_log=None, shutdown_timeout=2.0,
                                  handler_cancellation=True,   # a client gone away aborts its request
                                  keepalive_timeout=self.ctx.config.ServerConfig.requestReadTimeout)
        await ls.runner.setup()
        # TLS connections counted from accept, with a short handshake timeout (server/connections.py)
        sc = self.ctx.config.ServerConfig
        gate = ConnectionGate("+".join(ls.planes), gate_limit(ls.planes, sc.maxLinkNum))
        site = GatedTLSSite(ls.runner, ls.host, ls.port, ssl_context=ls.ssl_context, backlog=backlog, gate=gate,
                            handshake_timeout=min(TLS_HANDSHAKE_TIMEOUT_S, float(sc.requestReadTimeout)))
        await site.start()

    async def _wait_inflight(self, grace: float) -> None:
        """Until no request is in flight, at most `grace` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.ctx.inflight > 0 and loop.time() < deadline:
            await asyncio.sleep(0.05)

    async def fail(self, reason: str) -> None:
        """A rank is gone: /health and new requests answer 503 at once; the engine fails the requests in flight
        (HTTP 500 / an error event); once they are answered (at most the grace period) and FAILURE_LINGER_S more,
        the caller drains and stops."""
        self.ctx.stopping = True
        log.error("unhealthy: %s; failing in-flight requests and exiting", reason)
        await self._wait_inflight(self.grace)
        await asyncio.sleep(FAILURE_LINGER_S)

    async def drain(self) -> None:
        """Stop accepting (listening sockets closed, new requests on open connections get 503), then give in-flight
        requests up to the grace period. aiohttp's own shutdown would stop reading request bodies at once, so the
        waiting is done here. Requests still generating when it ends are aborted in the engine (each gets a 503)
        and aiohttp's cleanup only cancels what is left (e.g. a request whose body never arrived)."""
        self.ctx.stopping = True
        grace = self.grace
        log.info("stopping: no new connections; %d in-flight request(s) get up to %.0fs", self.ctx.inflight, grace)
        for ls in self.listeners:
            if ls.runner is not None:
                for site in list(ls.runner.sites):
                    await site.stop()
        await self._wait_inflight(grace)
        if self.ctx.inflight:
            log.warning("grace period over: cancelling %d request(s)", self.ctx.inflight)
            # stop the engine first: its requests end with "abort", which the handlers turn into a 503 (an error
            # event then [DONE] on a started stream) within aiohttp's shutdown_timeout, not a cut mid-answer
            await self._shutdown_engine()

    async def stop(self) -> None:
        """Closes the listeners, then the engine and the model runner (each at most once)."""
        trimmer = getattr(self, "_trimmer", None)
        if trimmer is not None:
            trimmer.cancel()
        await asyncio.gather(*(ls.runner.cleanup() for ls in self.listeners if ls.runner is not None),
                             return_exceptions=True)
        await self._shutdown_engine()
        runner = getattr(self.ctx.engine, "runner", None)
        if runner is not None and hasattr(runner, "close"):
            runner.close()

    async def _shutdown_engine(self) -> None:
        engine = self.ctx.engine
        if engine is not None and hasattr(engine, "shutdown"):
            try:
                await asyncio.to_thread(engine.shutdown, max(self.grace, 1.0))
            except Exception:
                log.exception("engine shutdown failed")
