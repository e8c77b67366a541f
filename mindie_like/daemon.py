"""The daemon: load config → mindie_like.assembly (backend, serving objects) → start the planes → "Daemon start success!".

    bin/serviced_daemon [--config-file PATH] [--check-config] [--strict-permissions]

Exit codes: 0 after a clean stop (SIGTERM/SIGINT), 2 for an invalid config or certificate (every problem the files
show, one line each on stderr, all in one run: mindie_like.preflight, which --check-config runs too; a worldSize
the model's heads do not divide is one, so is a pre-quantized checkpoint that cannot be served),
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
import os
import signal
import sys

from .cpu_threads import set_openmp_defaults

set_openmp_defaults(os.environ)     # before torch is imported (below): libgomp reads it when it loads

from .assembly import ROUTES, BackendLoadError, build_backend, build_context, ssl_factory  # noqa: E402
from .config import ConfigError, effective_config, to_engine_config  # noqa: E402
from .config.loader import ACCEPTED_WITHOUT_EFFECT  # noqa: E402
from .config.logging_setup import setup_logging  # noqa: E402
from .preflight import preflight  # noqa: E402

log = logging.getLogger("mindie_like.daemon")

START_LINE = "Daemon start success!"
EXIT_CONFIG = 2
EXIT_RUNTIME = 1


async def serve(ctx, ssl) -> int:
    """Serves until SIGTERM/SIGINT (drain, exit 0) or a tensor-parallel failure (fail, drain, exit 1)."""
    from .server.lifecycle import ListenError, Server

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    failure: list[str] = []
    runner = getattr(ctx.engine, "runner", None)
    if hasattr(runner, "add_failure_listener"):      # tensor parallelism: a rank died or hung
        def on_failure(reason: str) -> None:
            failure.append(reason)
            loop.call_soon_threadsafe(stop.set)
        runner.add_failure_listener(on_failure)
    server = Server(ctx, ROUTES, ssl)
    try:
        try:
            await server.start()
        except ListenError as e:
            print(str(e), file=sys.stderr, flush=True)
            return EXIT_RUNTIME
        print(START_LINE, flush=True)
        await stop.wait()
        if failure:
            await server.fail(failure[0])
        await server.drain()
    finally:
        await server.stop()
    if failure:
        log.error("exiting after a tensor-parallel failure: %s", failure[0])
        return EXIT_RUNTIME
    log.info("stopped")
    return 0


def parse_args(argv):
    p = argparse.ArgumentParser(prog="serviced_daemon", description="mindie_like serving daemon")
    p.add_argument("--config-file", help="config path (else MIES_CONFIG_JSON_PATH, "
                                         "$MINDIE_LLM_HOME_PATH/conf/config.json, the install's conf/config.json)")
    p.add_argument("--check-config", action="store_true",
                   help="check the config, the certificates and the model's files as the daemon does at start "
                        "(exit 2 with one line per problem), print the effective config, exit")
    p.add_argument("--strict-permissions", action="store_true",
                   help="refuse a config file that group or others may write, and private keys or passphrase "
                        "files that group or others may read (without it: warnings)")
    return p.parse_args(argv)


class _StopDuringStart(BaseException):   # not caught by the `except Exception` of loaders
    pass


def _stop_during_start(signum, frame):
    raise _StopDuringStart(signal.Signals(signum).name)


def main(argv=None) -> int:
    from .server.memory import configure_allocator
    configure_allocator()     # before the model and the first requests allocate: freed memory goes back
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


def _refuse(lines: list[str]) -> int:
    for line in lines:
        print(line, file=sys.stderr, flush=True)
    return EXIT_CONFIG


def _main(args) -> int:
    # --check-config: stdout is the effective config as JSON, so logging goes to stderr
    stream = sys.stderr if args.check_config else None
    loaded, problems = preflight(args.config_file, strict_permissions=args.strict_permissions)
    if loaded is not None:
        try:
            setup_logging(loaded, stream=stream)      # a log file path outside the home dir is refused here
        except ConfigError as e:
            problems = e.lines + problems
    if problems:
        return _refuse(problems)
    if args.check_config:
        print(json.dumps(effective_config(loaded.config), indent=2, ensure_ascii=False))
        return 0
    if loaded.config.BackendConfig.multiNodesInferEnabled:
        from .backend_atb.parallel import world_layout
        engine_config = to_engine_config(loaded)
        if world_layout(engine_config).node_rank > 0:   # this node only runs tensor-parallel ranks; node 0 serves
            from .backend_atb.tp_runner import serve_worker_node
            return serve_worker_node(engine_config)
    log.info("%s", ACCEPTED_WITHOUT_EFFECT)
    if not loaded.config.ServerConfig.httpsEnabled:
        log.warning("ServerConfig.httpsEnabled is false: the planes serve plain HTTP without client authentication")
    from .server.connections import unbindable
    busy = unbindable(loaded.config.ServerConfig)
    if busy:                    # before the model loads: a port in use is reported at once, not minutes later
        for line in busy:
            print(line, file=sys.stderr, flush=True)
        return EXIT_RUNTIME
    try:
        backend, engine_config = build_backend(loaded)
    except BackendLoadError as e:
        print(str(e), file=sys.stderr, flush=True)
        return EXIT_RUNTIME
    except ConfigError as e:
        return _refuse(e.lines)
    ctx = build_context(loaded, backend, engine_config)
    try:
        return asyncio.run(serve(ctx, ssl_factory(loaded)))
    except ConfigError as e:
        return _refuse(e.lines)


if __name__ == "__main__":
    sys.exit(main())
