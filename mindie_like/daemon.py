"""The daemon: load config → build backend (tokenizer, HF config, engine) → start planes → "Daemon start success!".

    bin/serviced_daemon [--config-file PATH] [--check-config] [--strict-permissions]

Exit codes: 0 after a clean stop (SIGTERM/SIGINT), 2 for an invalid config or certificate (one line each on
stderr; a worldSize the model's heads do not divide is one, so is a pre-quantized checkpoint that cannot be served),
1 when the model cannot be loaded, a port cannot be bound, or a tensor-parallel rank died or hung while serving
(/health answers 503 until the daemon is gone).

With multiNodesInferEnabled and NODE_RANK > 0 the daemon only runs this node's tensor-parallel ranks
(backend_atb.tp_runner.serve_worker_node): node 0's daemon serves HTTP.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import logging.handlers
import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional

from .config import ConfigError, LoadedConfig, effective_config, gguf_file_in, load_config, to_engine_config

log = logging.getLogger("mindie_like.daemon")

START_LINE = "Daemon start success!"
EXIT_CONFIG = 2
EXIT_RUNTIME = 1
FAILURE_LINGER_S = 2.0    # after a tensor-parallel rank fails: /health answers 503 this long before the exit


# -- logging -----------------------------------------------------------------------------------------------
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING, "WARNING": logging.WARNING,
           "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL}


def _env_bool(env, name: str, default: bool) -> bool:
    v = env.get(name)
    if v is None or v.strip() == "":
        return default
    return v.strip().lower() in ("1", "true", "yes", "on")


def _parse_level(value: Optional[str]) -> Optional[int]:
    """MINDIE_LOG_LEVEL: a level name, or MindIE's `component:LEVEL;...` form (the first level found wins)."""
    if not value:
        return None
    for part in value.replace(",", ";").split(";"):
        name = part.split(":")[-1].strip().upper()
        if name in _LEVELS:
            return _LEVELS[name]
    return None


def setup_logging(loaded: Optional[LoadedConfig] = None, env=None, stream=None) -> None:
    """Logging per MINDIE_LOG_LEVEL / MINDIE_LOG_TO_STDOUT / MINDIE_LOG_TO_FILE / MINDIE_LOG_PATH, falling back
    on LogConfig. Prompts and outputs are logged only at DEBUG (by the routes)."""
    env = os.environ if env is None else env
    level = _parse_level(env.get("MINDIE_LOG_LEVEL"))
    if level is None:
        level = _LEVELS.get(loaded.config.LogConfig.logLevel.upper(), logging.INFO) if loaded else logging.INFO
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s")
    if _env_bool(env, "MINDIE_LOG_TO_STDOUT", True):
        h = logging.StreamHandler(stream or sys.stdout)
        h.setFormatter(fmt)
        root.addHandler(h)
    if _env_bool(env, "MINDIE_LOG_TO_FILE", False) and loaded is not None:
        lc = loaded.config.LogConfig
        p = env.get("MINDIE_LOG_PATH")
        if p:
            path = loaded.resolve(p if p.endswith(".log") else os.path.join(p, "mindie-server.log"), "MINDIE_LOG_PATH")
        else:
            path = loaded.resolve(lc.logPath, "LogConfig.logPath")
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.handlers.RotatingFileHandler(path, maxBytes=lc.logFileSize * 1024 * 1024,
                                                  backupCount=lc.logFileNum)
        fh.setFormatter(fmt)
        root.addHandler(fh)
    if not root.handlers:
        root.addHandler(logging.NullHandler())
    root.setLevel(level)
    for noisy in ("aiohttp.access", "asyncio", "urllib3", "filelock", "torch", "transformers"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


# -- backend -----------------------------------------------------------------------------------------------
class BackendLoadError(Exception):
    pass


def cache_dir(loaded: LoadedConfig) -> Path:
    """Where derived files go (a GGUF model imported as safetensors with its tokenizer): env
    MINDIE_LIKE_CACHE_DIR, else <home>/cache."""
    env = os.environ.get("MINDIE_LIKE_CACHE_DIR")
    return Path(env).expanduser().resolve() if env else loaded.home / "cache"


def build_backend(loaded: LoadedConfig):
    """Loads the model (mindie_like.backend_atb imports a GGUF file once into a safetensors cache), its tokenizer
    and config from the loaded folder, and starts the engine on it."""
    from transformers import AutoTokenizer

    from .backend_atb import ModelRunner
    from .backend_atb.parallel import TPConfigError
    from .backend_atb.quant.checkpoint import CheckpointRefused
    from .engine import AsyncEngine
    from .server.context import Backend
    engine_config = to_engine_config(loaded)
    engine_config.extra["cache_dir"] = str(cache_dir(loaded))   # where a GGUF model is imported once
    model_path = Path(engine_config.model_path)
    t0 = time.monotonic()
    log.info("loading the model in %s", model_path)
    runner = None
    try:
        runner = ModelRunner.load(engine_config)
        tokenizer = AutoTokenizer.from_pretrained(runner.tokenizer_path,
                                                  trust_remote_code=engine_config.trust_remote_code)
    except TPConfigError as e:       # worldSize vs the model's heads, devices, multi-node environment
        raise ConfigError(str(e)) from e
    except CheckpointRefused as e:   # a pre-quantized checkpoint that cannot be served
        raise ConfigError(f"BackendConfig.ModelDeployConfig.ModelConfig[0].{e.key}: {e}") from e
    except Exception as e:  # transformers and safetensors raise many kinds
        if runner is not None:
            runner.close()
        raise BackendLoadError(f"BackendConfig.ModelDeployConfig.ModelConfig[0].modelWeightPath: {model_path}: "
                               f"cannot load the model ({type(e).__name__}: {e})") from e
    engine = AsyncEngine(engine_config, runner, tokenizer)
    backend = Backend(tokenizer=tokenizer, hf_config=runner.hf_config, model_type=runner.model_type,
                      model_path=model_path, gguf_file=gguf_file_in(model_path), engine=engine,
                      tokenizer_dir=runner.tokenizer_path)
    stats = engine.stats()
    log.info("model %s (model_type %s) ready in %.1fs on %s, %s; KV cache %d blocks of %d tokens",
             loaded.config.model.modelName, runner.model_type, time.monotonic() - t0, runner.device,
             str(runner.dtype).replace("torch.", ""), stats.total_blocks, stats.block_size)
    return backend, engine_config


def register_routes() -> None:
    """Business routes beyond /v1/models, registered before the planes are built."""
    from .server import register_business_routes
    from .server.compat import add_compat_routes
    from .server.openai import add_openai_routes
    register_business_routes(add_openai_routes)
    register_business_routes(add_compat_routes)


def build_context(loaded: LoadedConfig, backend, engine_config):
    """The ServingContext the planes serve, with the OpenAI routes registered: what the daemon runs, and what
    in-process tests build around a test backend (tests/e2e/test_parser_wiring_http.py)."""
    from .server.context import ServingContext
    from .server.metrics import Metrics
    register_routes()
    return ServingContext(loaded=loaded, backend=backend, engine_config=engine_config,
                          metrics=Metrics(loaded.config.model.modelName))


# -- serving -----------------------------------------------------------------------------------------------
def ssl_factory(loaded: LoadedConfig):
    """plane -> the server SSLContext of that plane (mutual TLS), for build_listeners."""
    from .server.tls import server_ssl_context
    return lambda plane: server_ssl_context(loaded, plane)


async def start_listener(ls, backlog: int) -> None:
    """Sets up `ls.runner` and starts listening (raises OSError when the port cannot be bound)."""
    from aiohttp import web

    from .server.connections import TLS_HANDSHAKE_TIMEOUT_S, ConnectionGate, GatedTLSSite, gate_limit
    from .server.context import CTX_KEY
    # shutdown_timeout: what requests still running after the grace period get to wind down once cancelled
    # keepalive_timeout bounds the wait for a request's headers (from the connection or the previous answer) as well
    # as idle keep-alive connections: a client sending its headers a byte at a time is dropped after it
    ls.runner = web.AppRunner(ls.app, handle_signals=False, access_log=None, shutdown_timeout=2.0,
                              handler_cancellation=True,   # a client gone away aborts its request
                              keepalive_timeout=ls.app[CTX_KEY].config.ServerConfig.requestReadTimeout)
    await ls.runner.setup()
    server_config = ls.app[CTX_KEY].config.ServerConfig
    gate = ConnectionGate("+".join(ls.planes), gate_limit(ls.planes, server_config.maxLinkNum))
    site = GatedTLSSite(ls.runner, ls.host, ls.port, ssl_context=ls.ssl_context, backlog=backlog, gate=gate,
                        handshake_timeout=min(TLS_HANDSHAKE_TIMEOUT_S, float(server_config.requestReadTimeout)))
    await site.start()


async def drain(ctx, listeners, grace: float) -> None:
    """Stop accepting (listening sockets closed, new requests on open connections get 503), then give in-flight
    requests up to `grace` seconds. aiohttp's own shutdown would stop reading request bodies at once, so the
    waiting is done here. Requests still generating when it ends are aborted in the engine (each gets a 503) and
    aiohttp's cleanup only cancels what is left (e.g. a request whose body never arrived)."""
    ctx.stopping = True
    log.info("stopping: no new connections; %d in-flight request(s) get up to %.0fs", ctx.inflight, grace)
    for ls in listeners:
        if ls.runner is not None:
            for site in list(ls.runner.sites):
                await site.stop()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while ctx.inflight > 0 and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if ctx.inflight:
        log.warning("grace period over: cancelling %d request(s)", ctx.inflight)
        # stop the engine first: its requests end with "abort", which the handlers turn into a 503 (an error event
        # then [DONE] on a started stream) within aiohttp's shutdown_timeout, instead of a connection cut mid-answer
        engine = ctx.engine
        if engine is not None and hasattr(engine, "shutdown"):
            try:
                await asyncio.to_thread(engine.shutdown, max(grace, 1.0))
            except Exception:
                log.exception("engine shutdown failed")


async def serve(ctx, ssl_factory) -> int:
    from .server.app import build_listeners

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    engine = ctx.engine
    runner = getattr(engine, "runner", None)
    failure: list[str] = []
    if hasattr(runner, "add_failure_listener"):      # tensor parallelism: a rank died or hung
        def on_failure(reason: str) -> None:
            failure.append(reason)
            loop.call_soon_threadsafe(stop.set)
        runner.add_failure_listener(on_failure)
    grace = float(ctx.config.ServerConfig.shutdownGracePeriod)
    listeners = build_listeners(ctx, ssl_factory)
    backlog = max(128, ctx.config.ServerConfig.maxLinkNum)
    try:
        for ls in listeners:
            try:
                await start_listener(ls, backlog)
            except OSError as e:
                key = {"business": "port", "management": "managementPort", "metrics": "metricsPort"}[ls.planes[0]]
                print(f"ServerConfig.{key}: cannot listen on {ls.host}:{ls.port} ({e.strerror or e})",
                      file=sys.stderr, flush=True)
                return EXIT_RUNTIME
            log.info("%s plane%s listening on %s://%s:%d", "+".join(ls.planes), "s" if len(ls.planes) > 1 else "",
                     ls.scheme, ls.host, ls.port)
        print(START_LINE, flush=True)
        await stop.wait()
        if failure:
            await fail_serving(ctx, failure[0], grace)
        await drain(ctx, listeners, grace)
    finally:
        await asyncio.gather(*(ls.runner.cleanup() for ls in listeners if ls.runner is not None),
                             return_exceptions=True)
        if engine is not None and hasattr(engine, "shutdown"):
            try:
                await asyncio.to_thread(engine.shutdown, max(grace, 1.0))
            except Exception:
                log.exception("engine shutdown failed")
        if runner is not None:
            runner.close()
    if failure:
        log.error("exiting after a tensor-parallel failure: %s", failure[0])
        return EXIT_RUNTIME
    log.info("stopped")
    return 0


async def fail_serving(ctx, reason: str, grace: float) -> None:
    """A rank is gone: /health and new requests answer 503 at once; the engine fails the requests in flight
    (HTTP 500 / an error event); once they are answered (at most `grace` seconds) and FAILURE_LINGER_S more, the
    listeners close."""
    ctx.stopping = True
    log.error("unhealthy: %s; failing in-flight requests and exiting", reason)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while ctx.inflight > 0 and loop.time() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(FAILURE_LINGER_S)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="serviced_daemon", description="mindie_like serving daemon")
    p.add_argument("--config-file", help="config path (else MIES_CONFIG_JSON_PATH, "
                                         "$MINDIE_LLM_HOME_PATH/conf/config.json, the install's conf/config.json)")
    p.add_argument("--check-config", action="store_true",
                   help="validate the config (and certificates), print the effective config, exit")
    p.add_argument("--strict-permissions", action="store_true",
                   help="refuse a config file that group or others may write, and private keys or passphrase "
                        "files that group or others may read (without it: warnings)")
    return p.parse_args(argv)


class _StopDuringStart(BaseException):   # not caught by the `except Exception` of loaders
    pass


def _stop_during_start(signum, frame):
    raise _StopDuringStart(signal.Signals(signum).name)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging(None, stream=sys.stderr if args.check_config else None)
    # SIGTERM/SIGINT while the model loads: nothing is in flight yet, so stop at once and exit 0
    # (serve() installs the graceful handlers once the listeners are up)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop_during_start)
    try:
        return _main(args)
    except _StopDuringStart as e:
        log.info("%s during start-up: stopped", e)
        return 0


def _main(args) -> int:
    try:
        loaded = load_config(args.config_file, strict_permissions=args.strict_permissions)
        setup_logging(loaded, stream=sys.stderr if args.check_config else None)   # --check-config: stdout is JSON
        planes_needing_tls = ["business", "management", "metrics"] if loaded.config.ServerConfig.httpsEnabled else []
        if planes_needing_tls:
            from .server.tls import check_all_planes
            check_all_planes(loaded, planes_needing_tls)
    except ConfigError as e:
        for line in e.lines:
            print(line, file=sys.stderr, flush=True)
        return EXIT_CONFIG
    if args.check_config:
        print(json.dumps(effective_config(loaded.config), indent=2, ensure_ascii=False))
        return 0
    if loaded.config.BackendConfig.multiNodesInferEnabled:
        from .backend_atb.parallel import TPConfigError, world_layout
        engine_config = to_engine_config(loaded)
        try:
            layout = world_layout(engine_config)
        except TPConfigError as e:
            print(str(e), file=sys.stderr, flush=True)
            return EXIT_CONFIG
        if layout.node_rank > 0:        # this node only runs tensor-parallel ranks; node 0 serves
            from .backend_atb.tp_runner import serve_worker_node
            return serve_worker_node(engine_config)
    if not loaded.config.ServerConfig.httpsEnabled:
        log.warning("ServerConfig.httpsEnabled is false: the planes serve plain HTTP without client authentication")
    s = loaded.config.ServerConfig
    from .server.connections import unbindable
    busy = unbindable({"port": (s.ipAddress, s.port), "managementPort": (s.managementIpAddress, s.managementPort),
                       "metricsPort": (s.managementIpAddress, s.metricsPort)})
    if busy:                    # before the model loads: a port in use is reported at once
        for line in busy:
            print(line, file=sys.stderr, flush=True)
        return EXIT_RUNTIME
    try:
        backend, engine_config = build_backend(loaded)
    except BackendLoadError as e:
        print(str(e), file=sys.stderr, flush=True)
        return EXIT_RUNTIME
    except ConfigError as e:
        for line in e.lines:
            print(line, file=sys.stderr, flush=True)
        return EXIT_CONFIG
    ctx = build_context(loaded, backend, engine_config)
    try:
        factory = ssl_factory(loaded) if loaded.config.ServerConfig.httpsEnabled else None
        return asyncio.run(serve(ctx, factory))
    except ConfigError as e:
        for line in e.lines:
            print(line, file=sys.stderr, flush=True)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
