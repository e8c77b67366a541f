"""bin/ms_coordinator in front of test daemons, for the coordinator tests.

    daemons = [daemon_factory(...), ...]                   # started with share_certs(first) before start
    coord = start_coordinator(home, daemons[0].certs, [d.base_url for d in daemons], algorithm="round_robin")
    coord.openai_client(); coord.request("GET", "/workers", plane="manage"); coord.stop()

All daemons and the coordinator use one certificate set (bin/gen_certs' layout), so the coordinator's client
certificate is trusted by every daemon and the clients' certificates by the coordinator.
"""
from __future__ import annotations

import http.client
import json
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

from .conftest import REPO, DaemonHandle, daemon_env, free_ports, new_daemon, stop_process

START_LINE = "ms_coordinator start success"


def tools_available() -> Optional[str]:
    """Why the coordinator cannot run here (None: it can)."""
    from mindie_like.coordinator.launch import find_nginx, find_smg
    if find_smg() is None:
        return "the smg gateway is not installed (pip install -e '.[coordinator]')"
    if find_nginx() is None:
        return "nginx is not installed (apt-get install nginx-light; bin/install --dev does it as root)"
    return None


def new_shared_daemon(home: Path, model_dir: Path, certs_from: Optional[DaemonHandle] = None, **overrides):
    """A configured daemon whose security/ folder is a copy of `certs_from`'s (one CA for all)."""
    h = new_daemon(home, model_dir, in_process_certs=True, **overrides)
    if certs_from is not None:
        shutil.rmtree(home / "security")
        shutil.copytree(certs_from.home / "security", home / "security")
        h.certs = {k: home / Path(v).relative_to(certs_from.home) for k, v in certs_from.certs.items()}
    return h


def coordinator_config(instance_urls: list[str], *, algorithm: str = "round_robin", ports=None, **sections) -> dict:
    cfg = json.loads((REPO / "conf" / "ms_coordinator.json").read_text())
    p, m = ports or free_ports(2)
    cfg["http_config"].update(predict_port=str(p), manage_port=str(m))
    cfg["digs_scheduler_config"]["algorithm_type"] = algorithm
    cfg["instances"].update(urls=list(instance_urls), health_check_interval_seconds=1, health_failure_threshold=2,
                            health_check_timeout_seconds=3, shutdown_grace_seconds=20)
    for name, over in sections.items():
        cfg.setdefault(name, {}).update(over)
    return cfg


@dataclass
class CoordinatorHandle:
    home: Path
    config: dict
    certs: dict
    proc: Optional[subprocess.Popen] = None
    lines: list = field(default_factory=list)

    @property
    def predict_port(self) -> int:
        return int(self.config["http_config"]["predict_port"])

    @property
    def manage_port(self) -> int:
        return int(self.config["http_config"]["manage_port"])

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.predict_port}"

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def ca(self, plane: str = "predict"):
        """The CA a client trusts: the predict port serves the business set, the manage port the management set."""
        return self.certs["ca" if plane == "predict" else "management_ca"]

    def ssl_context(self, client: Optional[str] = "client", plane: str = "predict") -> ssl.SSLContext:
        """Trusts the plane's CA; presents `client` ("client": the plane's own client certificate, "revoked", a
        daemon plane's name, or None)."""
        ctx = ssl.create_default_context(cafile=str(self.ca(plane)))
        if client:
            name = ("client" if plane == "predict" else "management") if client == "client" else client
            ctx.load_cert_chain(str(self.certs[f"{name}_cert"]), str(self.certs[f"{name}_key"]))
        return ctx

    def openai_client(self, *, async_client: bool = False, **kw):
        import openai
        if async_client:
            return openai.AsyncOpenAI(base_url=self.base_url + "/v1", api_key="x",
                                      http_client=openai.DefaultAsyncHttpxClient(verify=self.ssl_context()), **kw)
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key="x",
                             http_client=openai.DefaultHttpxClient(verify=self.ssl_context()), **kw)

    def request(self, method: str, path: str, body=None, *, plane: str = "predict",
                context: Optional[ssl.SSLContext] = None, timeout: float = 120) -> tuple[int, bytes]:
        port = self.predict_port if plane == "predict" else self.manage_port
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context or self.ssl_context(plane=plane),
                                           timeout=timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def workers(self) -> list[dict]:
        status, body = self.request("GET", "/workers", plane="manage")
        assert status == 200, body
        return json.loads(body)["workers"]

    def wait_workers(self, predicate, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"ms_coordinator exited with {self.proc.returncode}:\n{self.output[-4000:]}")
            ws = self.workers()
            if predicate(ws):
                return ws
            if time.monotonic() > deadline:
                pytest.fail(f"workers never reached the expected state: {ws}")
            time.sleep(0.5)

    def start(self, timeout: float = 90) -> "CoordinatorHandle":
        conf = self.home / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        path = conf / "ms_coordinator.json"
        path.write_text(json.dumps(self.config, indent=2))
        path.chmod(0o640)
        self.proc = subprocess.Popen([str(REPO / "bin" / "ms_coordinator"), "--config-file", str(path)],
                                     cwd=str(self.home), env=daemon_env(self.home), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        started = threading.Event()

        def pump():
            for line in self.proc.stdout:
                self.lines.append(line)
                if line.startswith(START_LINE):
                    started.set()
            started.set()

        threading.Thread(target=pump, daemon=True).start()
        if not started.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            pytest.fail(f"ms_coordinator did not start:\n{self.output[-4000:]}")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> Optional[int]:
        return stop_process(self.proc, sig, timeout)


def start_coordinator(home: Path, certs_from: DaemonHandle, instance_urls: list[str], **kw) -> CoordinatorHandle:
    """A coordinator in `home` (a copy of `certs_from`'s security/), started."""
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "security").exists():
        shutil.copytree(certs_from.home / "security", home / "security")
    certs = {k: home / Path(v).relative_to(certs_from.home) for k, v in certs_from.certs.items()}
    return CoordinatorHandle(home, coordinator_config(instance_urls, **kw), certs).start()


def requests_received(daemon: DaemonHandle) -> float:
    """The daemon's own request_received counter, from its metrics plane."""
    status, body = daemon.request("GET", "/metrics", plane="metrics")
    assert status == 200, body
    m = re.search(rb'^request_received(?:_total)?\{[^}]*\} ([0-9.e+]+)$', body, re.M)
    assert m, body[:2000]
    return float(m.group(1))


def run_refusal(tmp_path: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    conf = tmp_path / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    path = conf / "ms_coordinator.json"
    path.write_text(json.dumps(config))
    return subprocess.run([sys.executable, "-m", "mindie_like.coordinator.main", "--config-file", str(path), *args],
                          cwd=str(tmp_path), env=daemon_env(tmp_path), capture_output=True, text=True, timeout=120)
