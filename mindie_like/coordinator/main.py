"""bin/ms_coordinator: validate conf/ms_coordinator.json, then run the gateway and its TLS front and watch both.

    ms_coordinator [--config-file PATH] [--check-config] [predict_ip predict_port manage_ip manage_port]

The four positional arguments replace http_config's values, as MindIE's ms_coordinator takes them. Exit codes:
2 a refused config (one line per problem on stderr), 1 a child that died or could not start, 0 after SIGTERM/SIGINT.
SIGTERM drains: nginx stops accepting and finishes the requests in flight (streams included, up to
instances.shutdown_grace_seconds), then the gateway gets SIGTERM and drains its own side.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Optional

from ..config.loader import ConfigError
from .config import LoadedCoordinatorConfig, load_coordinator_config
from .launch import find_nginx, find_smg, gateway_argv, nginx_conf

EXIT_CONFIG, EXIT_RUNTIME = 2, 1
START_LINE = "ms_coordinator start success"
GATEWAY_START_TIMEOUT_S = 60.0


def parse_args(argv):
    p = argparse.ArgumentParser(prog="ms_coordinator", description="MindIE-style coordinator over the SGLang Model "
                                                                   "Gateway, mutual TLS on both hops")
    p.add_argument("--config-file", help="config path (else MINDIE_MS_COORDINATOR_CONFIG_FILE_PATH, else the "
                                         "install's conf/ms_coordinator.json)")
    p.add_argument("--check-config", action="store_true", help="validate, print the gateway command line, exit")
    p.add_argument("--run-dir", help="where the generated nginx config and temp files go (default: a new "
                                     "temporary directory, removed at exit)")
    p.add_argument("address", nargs="*", help="predict_ip predict_port manage_ip manage_port")
    return p.parse_args(argv)


def _override_addresses(loaded: LoadedCoordinatorConfig, address: list[str]) -> None:
    if not address:
        return
    if len(address) != 4:
        raise ConfigError(f"arguments: {len(address)} given; pass none or all four of predict_ip predict_port "
                          f"manage_ip manage_port")
    from pydantic import ValidationError
    from ..config.loader import format_validation_error
    from .config import HttpConfig
    data = loaded.config.http_config.model_dump()
    data.update(predict_ip=address[0], predict_port=address[1], manage_ip=address[2], manage_port=address[3])
    try:
        loaded.config.http_config = HttpConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(["http_config." + ln for ln in format_validation_error(e)]) from None


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_gateway(port: int, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/liveness", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def _wait_listening(addresses: list[tuple[str, int]], proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    pending = list(addresses)
    while pending and time.monotonic() < deadline and proc.poll() is None:
        host, port = pending[0]
        try:
            with socket.create_connection(({"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host), port), 1):
                pending.pop(0)
        except OSError:
            time.sleep(0.1)
    return not pending


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM if bin/ms_coordinator dies without stopping it (Linux)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except OSError:
        pass


def _stop(proc: Optional[subprocess.Popen], sig: int, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        loaded = load_coordinator_config(args.config_file)
        _override_addresses(loaded, args.address)
    except ConfigError as e:
        for line in e.lines:
            print(line, file=sys.stderr, flush=True)
        return EXIT_CONFIG
    for line in loaded.warnings:
        print(f"warning: {line}", file=sys.stderr, flush=True)
    smg, nginx = find_smg(), find_nginx()
    missing = [f"{name}: not found ({how})" for name, path, how in (
        ("smg", smg, "install the coordinator extra: pip install -e '.[coordinator]'"),
        ("nginx", nginx, "install it: apt-get install nginx-light, or run bin/install --dev as root"))
        if path is None]
    if args.check_config:
        print(json.dumps({"policy": loaded.config.policy,
                          "gateway": gateway_argv(smg or "smg", loaded, 0, "<admin key>", 0),
                          "missing": missing}, indent=2))
        return 0
    if missing:
        for line in missing:
            print(line, file=sys.stderr, flush=True)
        return EXIT_RUNTIME
    return _run(loaded, smg, nginx, args.run_dir)


def _run(loaded: LoadedCoordinatorConfig, smg: str, nginx: str, run_dir_arg: Optional[str]) -> int:
    own_dir = run_dir_arg is None
    run_dir = Path(run_dir_arg or tempfile.mkdtemp(prefix="ms_coordinator-")).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(run_dir, 0o711)              # nginx's workers (another user when started as root) use the temp dirs
    admin_key = secrets.token_urlsafe(32)
    port, metrics_port = _free_loopback_port(), _free_loopback_port()
    conf = run_dir / "nginx.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)   # holds the admin key
    with os.fdopen(fd, "w") as f:
        f.write(nginx_conf(loaded, run_dir, port, admin_key, metrics_port))
    check = subprocess.run([nginx, "-t", "-q", "-e", "stderr", "-p", str(run_dir), "-c", str(conf)],
                           capture_output=True, text=True)
    if check.returncode != 0:
        for line in (check.stderr or check.stdout).strip().splitlines():
            print(f"tls front: {line}", file=sys.stderr, flush=True)
        return EXIT_CONFIG

    stop_event = threading.Event()
    received: list[int] = []

    def on_signal(signum, frame):
        received.append(signum)
        stop_event.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    gateway = front = None
    code = 0
    try:
        gateway = subprocess.Popen(gateway_argv(smg, loaded, port, admin_key, metrics_port), stdin=subprocess.DEVNULL,
                                   preexec_fn=_die_with_parent)
        if not _wait_gateway(port, gateway, GATEWAY_START_TIMEOUT_S):
            print(f"gateway: did not come up on 127.0.0.1:{port} (exit status {gateway.poll()})", file=sys.stderr,
                  flush=True)
            return EXIT_RUNTIME
        front = subprocess.Popen([nginx, "-e", "stderr", "-p", str(run_dir), "-c", str(conf)],
                                 stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        h = loaded.config.http_config
        if not _wait_listening([(h.predict_ip, h.predict_port), (h.manage_ip, h.manage_port)], front, 30):
            print(f"tls front: not listening on {h.predict_ip}:{h.predict_port} and {h.manage_ip}:{h.manage_port} "
                  f"(exit status {front.poll()})", file=sys.stderr, flush=True)
            return EXIT_RUNTIME
        print(f"{START_LINE}: predict {h.predict_ip}:{h.predict_port}, manage {h.manage_ip}:{h.manage_port}, "
              f"policy {loaded.config.policy}", flush=True)
        while not stop_event.wait(0.5):
            for name, proc in (("gateway", gateway), ("tls front", front)):
                if proc.poll() is not None:
                    print(f"{name}: exited with status {proc.returncode}; stopping", file=sys.stderr, flush=True)
                    code = EXIT_RUNTIME
                    stop_event.set()
        grace = loaded.config.instances.shutdown_grace_seconds
        # nginx first (SIGQUIT: graceful, in-flight requests finish), then the gateway behind it
        _stop(front, signal.SIGQUIT, grace + 5)
        _stop(gateway, signal.SIGTERM, grace + 5)
        return code
    finally:
        _stop(front, signal.SIGTERM, 5)
        _stop(gateway, signal.SIGKILL, 5)
        if own_dir:
            import shutil
            shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
