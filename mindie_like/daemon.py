"""The daemon: load config → build backend (tokenizer, HF config, engine) → start planes → "Daemon start success!".

    bin/serviced_daemon [--config-file PATH] [--check-config] [--strict-permissions]

Exit codes: 0 after a clean stop (SIGTERM/SIGINT), 2 for an invalid config or certificate (one line each on
stderr), 1 when the model cannot be loaded or a port cannot be bound.
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
from .engine.types import Engine, EngineConfig

log = logging.getLogger("mindie_like.daemon")

START_LINE = "Daemon start success!"
EXIT_CONFIG = 2
EXIT_RUNTIME = 1


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
            path = Path(p).expanduser()
            path = path if path.suffix == ".log" else path / "mindie-server.log"
            if not path.is_absolute():
                path = loaded.home / path
        else:
            path = loaded.resolve(lc.logPath, "LogConfig.logPath", confine=False)
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


def load_tokenizer_and_config(model_path: Path, trust_remote_code: bool = False,
                              cache_root: Optional[Path] = None):
    """AutoConfig + AutoTokenizer from a Hugging Face folder, or from the single .gguf file a folder holds.

    Reading a tokenizer out of a GGUF file takes tens of seconds on 2 cores, so the result is saved once under
    `cache_root` (keyed by the file's name, size and mtime) and read from there on later starts."""
    from transformers import AutoConfig, AutoTokenizer
    gguf = gguf_file_in(model_path)
    kw = {"trust_remote_code": trust_remote_code}
    src = model_path
    if gguf is None and model_path.is_file() and model_path.suffix == ".gguf":
        src, gguf = model_path.parent, model_path.name
    cache = None
    if gguf and cache_root is not None:
        st = (src / gguf).stat()
        cache = cache_root / f"{Path(gguf).stem}-{st.st_size}-{int(st.st_mtime)}"
        if (cache / "config.json").is_file() and (cache / "tokenizer_config.json").is_file():
            try:
                return (AutoTokenizer.from_pretrained(cache, **kw), AutoConfig.from_pretrained(cache, **kw), gguf)
            except Exception as e:
                log.warning("ignoring the tokenizer cache %s (%s)", cache, e)
    if gguf:
        kw["gguf_file"] = gguf
    hf_config = AutoConfig.from_pretrained(src, **kw)
    tokenizer = AutoTokenizer.from_pretrained(src, **kw)
    if cache is not None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            tokenizer.save_pretrained(cache)
            hf_config.save_pretrained(cache)
        except Exception as e:   # a read-only home only costs the next start some seconds
            log.warning("could not cache the GGUF tokenizer/config in %s (%s)", cache, e)
    return tokenizer, hf_config, gguf


def build_engine(engine_config: EngineConfig, backend) -> Optional[Engine]:
    """>>> ENGINE PLUG-IN POINT <<<

    Create and return the real engine (mindie_like.engine.AsyncEngine) here, e.g.
        from .engine import AsyncEngine
        return AsyncEngine(engine_config, tokenizer=backend.tokenizer, hf_config=backend.hf_config)
    If the engine has `async start()` / `async shutdown()` the daemon awaits them around serving.
    Until the engine lands this returns None: routes that generate answer 503, nothing is faked."""
    return None


def cache_dir(loaded: LoadedConfig) -> Path:
    """Where derived files go (the GGUF tokenizer/config, and the engine's converted weights): env
    MINDIE_LIKE_CACHE_DIR, else <home>/cache."""
    env = os.environ.get("MINDIE_LIKE_CACHE_DIR")
    return Path(env).expanduser().resolve() if env else loaded.home / "cache"


def register_routes() -> None:
    """>>> ROUTE PLUG-IN POINT <<<

    Business routes beyond /v1/models are registered here, before the planes are built, e.g.
        from .server import register_business_routes
        from .server.chat import add_chat_routes          # add_chat_routes(app, ctx) -> None
        register_business_routes(add_chat_routes)"""


def build_backend(loaded: LoadedConfig):
    """Loads the model's tokenizer and config, then the engine (build_engine)."""
    from .server.context import Backend
    engine_config = to_engine_config(loaded)
    model_path = Path(engine_config.model_path)
    t0 = time.monotonic()
    log.info("loading the tokenizer and config of %s", model_path)
    try:
        tokenizer, hf_config, gguf = load_tokenizer_and_config(model_path, engine_config.trust_remote_code,
                                                               cache_dir(loaded) / "gguf_tokenizers")
    except Exception as e:  # transformers raises many kinds
        raise BackendLoadError(f"BackendConfig.ModelDeployConfig.ModelConfig[0].modelWeightPath: {model_path}: "
                               f"cannot load the model's config/tokenizer ({type(e).__name__}: {e})") from e
    model_type = getattr(hf_config, "model_type", "") or ""
    backend = Backend(tokenizer=tokenizer, hf_config=hf_config, model_type=model_type, model_path=model_path,
                      gguf_file=gguf)
    log.info("loaded tokenizer and config of %s (model_type %s) in %.1fs", model_path, model_type,
             time.monotonic() - t0)
    backend.engine = build_engine(engine_config, backend)
    if backend.engine is None:
        log.warning("no inference engine is plugged in yet: generation routes answer 503")
    return backend, engine_config


# -- serving -----------------------------------------------------------------------------------------------
def _ssl_factory(loaded: LoadedConfig):
    from .server.tls import server_ssl_context
    return lambda plane: server_ssl_context(loaded, plane)


async def drain(ctx, listeners, grace: float) -> None:
    """Stop accepting (listening sockets closed, new requests on open connections get 503), then give in-flight
    requests up to `grace` seconds. aiohttp's own shutdown would stop reading request bodies at once, so the
    waiting is done here and aiohttp's cleanup only cancels what is left."""
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


async def serve(ctx, ssl_factory) -> int:
    from aiohttp import web
    from .server.app import build_listeners

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    engine = ctx.engine
    if engine is not None and hasattr(engine, "start"):
        await engine.start()
    grace = float(ctx.config.ServerConfig.shutdownGracePeriod)
    listeners = build_listeners(ctx, ssl_factory)
    backlog = max(128, ctx.config.ServerConfig.maxLinkNum)
    try:
        for ls in listeners:
            # shutdown_timeout: what requests still running after the grace period get to wind down once cancelled
            ls.runner = web.AppRunner(ls.app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
            await ls.runner.setup()
            site = web.TCPSite(ls.runner, ls.host, ls.port, ssl_context=ls.ssl_context, backlog=backlog,
                               reuse_address=True)
            try:
                await site.start()
            except OSError as e:
                key = {"business": "port", "management": "managementPort", "metrics": "metricsPort"}[ls.planes[0]]
                print(f"ServerConfig.{key}: cannot listen on {ls.host}:{ls.port} ({e.strerror or e})",
                      file=sys.stderr, flush=True)
                return EXIT_RUNTIME
            log.info("%s plane%s listening on %s://%s:%d", "+".join(ls.planes), "s" if len(ls.planes) > 1 else "",
                     ls.scheme, ls.host, ls.port)
        print(START_LINE, flush=True)
        await stop.wait()
        await drain(ctx, listeners, grace)
    finally:
        await asyncio.gather(*(ls.runner.cleanup() for ls in listeners if ls.runner is not None),
                             return_exceptions=True)
        if engine is not None and hasattr(engine, "shutdown"):
            try:
                await asyncio.wait_for(engine.shutdown(), timeout=max(grace, 1.0))
            except Exception:
                log.exception("engine shutdown failed")
    log.info("stopped")
    return 0


def parse_args(argv):
    p = argparse.ArgumentParser(prog="serviced_daemon", description="mindie_like serving daemon")
    p.add_argument("--config-file", help="config path (else MIES_CONFIG_JSON_PATH, "
                                         "$MINDIE_LLM_HOME_PATH/conf/config.json, the install's conf/config.json)")
    p.add_argument("--check-config", action="store_true",
                   help="validate the config (and certificates), print the effective config, exit")
    p.add_argument("--strict-permissions", action="store_true",
                   help="refuse a config file that group or others may write")
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
    if not loaded.config.ServerConfig.httpsEnabled:
        log.warning("ServerConfig.httpsEnabled is false: the planes serve plain HTTP without client authentication")
    try:
        backend, engine_config = build_backend(loaded)
    except BackendLoadError as e:
        print(str(e), file=sys.stderr, flush=True)
        return EXIT_RUNTIME
    from .server.context import ServingContext
    from .server.metrics import Metrics
    register_routes()
    ctx = ServingContext(loaded=loaded, backend=backend, engine_config=engine_config,
                         metrics=Metrics(loaded.config.model.modelName))
    try:
        ssl_factory = _ssl_factory(loaded) if loaded.config.ServerConfig.httpsEnabled else None
        return asyncio.run(serve(ctx, ssl_factory))
    except ConfigError as e:
        for line in e.lines:
            print(line, file=sys.stderr, flush=True)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
