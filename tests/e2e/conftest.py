"""The real daemon as a subprocess, on free ports, with certificates from bin/gen_certs, for e2e tests.

Reuse it from any e2e module:

    def test_x(tiny_daemon):                       # one daemon per module, tiny random qwen2 model
        status, body = tiny_daemon.request("GET", "/v1/models")
        ctx = tiny_daemon.ssl_context()           # ssl.SSLContext with the client cert, for openai/httpx/aiohttp
        client = tiny_daemon.openai_client()      # openai.OpenAI over mutual TLS (async_client=True: AsyncOpenAI)
        url = tiny_daemon.base_url                # https://127.0.0.1:<port>

    def test_y(chat_daemon):                       # the one daemon several chat-only modules share

    @pytest.fixture(scope="module")
    def my_daemon(daemon_factory, tiny_model):     # a daemon with config overrides
        return daemon_factory(tiny_model("qwen2"), server={"maxLinkNum": 10}, model={"models": {...}})

`daemon_factory(model_dir, server=..., backend=..., deploy=..., schedule=..., model=..., top=..., env=...,
entry=...)` deep-merges each dict into that section of the default conf/config.json (model = ModelConfig[0]) and
stops every daemon it started when the module ends. `entry` replaces the `-m mindie_like.daemon` arguments of the
interpreter (e.g. a script that patches something and then calls mindie_like.daemon.main: tests/e2e/fault_daemon.py).
"""
from __future__ import annotations

import copy
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
START_LINE = "Daemon start success!"


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# The KV cache the test daemons get unless a test says otherwise (npuMemSize, GB): a tiny model's blocks are 64 KB,
# so this holds ~200k tokens. The default (-1: a quarter of available RAM, zeroed at start) is GBs, and zeroing
# it cost every daemon start seconds; tests/e2e/test_daemon.py keeps that default.
TEST_KV_GB = 0.1


def make_config(model_dir: Path, *, ports: Optional[list[int]] = None, server: Optional[dict] = None,
                backend: Optional[dict] = None, deploy: Optional[dict] = None, schedule: Optional[dict] = None,
                model: Optional[dict] = None, top: Optional[dict] = None) -> dict:
    """The repo's default conf/config.json pointed at `model_dir`, on `ports`, with overrides merged in (and a
    TEST_KV_GB KV cache unless `model` names npuMemSize)."""
    cfg = json.loads((REPO / "conf" / "config.json").read_text())
    ports = ports or free_ports(3)
    cfg["ServerConfig"].update(port=ports[0], managementPort=ports[1], metricsPort=ports[2])
    cfg["ServerConfig"] = deep_merge(cfg["ServerConfig"], server or {})
    b = cfg["BackendConfig"] = deep_merge(cfg["BackendConfig"], backend or {})
    b["ModelDeployConfig"] = deep_merge(b["ModelDeployConfig"], deploy or {})
    b["ScheduleConfig"] = deep_merge(b["ScheduleConfig"], schedule or {})
    m = b["ModelDeployConfig"]["ModelConfig"][0]
    m["modelWeightPath"] = str(model_dir)
    m["npuMemSize"] = TEST_KV_GB
    b["ModelDeployConfig"]["ModelConfig"][0] = deep_merge(m, model or {})
    return deep_merge(cfg, top or {})


def gen_certs(home: Path, in_process: bool = False) -> dict[str, Path]:
    """Certificates by bin/gen_certs (or, faster, by the same code in-process)."""
    if in_process:
        from mindie_like.server import certgen
        certgen.generate(home)
    else:
        subprocess.run([sys.executable, str(REPO / "bin" / "gen_certs"), "--home", str(home)], check=True,
                       capture_output=True)
    sec = home / "security"
    return {"ca": sec / "ca/ca.pem", "client_cert": sec / "client/client.pem",
            "client_key": sec / "client/client.key.pem", "revoked_cert": sec / "client/revoked.pem",
            "revoked_key": sec / "client/revoked.key.pem",
            # each plane's CA and client certificate: a client certificate opens only its own plane
            "business_ca": sec / "ca/ca.pem", "management_ca": sec / "ca/management_ca.pem",
            "metrics_ca": sec / "ca/metrics_ca.pem",
            "business_cert": sec / "client/client.pem", "business_key": sec / "client/client.key.pem",
            "management_cert": sec / "client/management.pem", "management_key": sec / "client/management.key.pem",
            "metrics_cert": sec / "client/metrics.pem", "metrics_key": sec / "client/metrics.key.pem"}


def daemon_env(home: Path, extra: Optional[dict] = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["MINDIE_LLM_HOME_PATH"] = str(home)
    env.pop("MIES_CONFIG_JSON_PATH", None)
    env.setdefault("MINDIE_LOG_LEVEL", "INFO")
    env.update(extra or {})
    return env


@dataclass
class DaemonHandle:
    home: Path
    config: dict
    certs: dict
    proc: Optional[subprocess.Popen] = None
    lines: list = field(default_factory=list)
    host: str = "127.0.0.1"
    env: Optional[dict] = None          # extra environment for the daemon process
    entry: tuple = ("-m", "mindie_like.daemon")   # what the interpreter runs

    @property
    def port(self) -> int:
        return self.config["ServerConfig"]["port"]

    @property
    def management_port(self) -> int:
        return self.config["ServerConfig"]["managementPort"]

    @property
    def metrics_port(self) -> int:
        return self.config["ServerConfig"]["metricsPort"]

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def management_url(self) -> str:
        return f"https://{self.host}:{self.management_port}"

    @property
    def metrics_url(self) -> str:
        return f"https://{self.host}:{self.metrics_port}"

    @property
    def model_name(self) -> str:
        return self.config["BackendConfig"]["ModelDeployConfig"]["ModelConfig"][0]["modelName"]

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def _client_files(self, client: Optional[str], plane: str) -> Optional[tuple[str, str]]:
        """("client": the plane's own client certificate; "revoked"; a plane's name: that plane's; None: none)."""
        if not client:
            return None
        name = plane if client == "client" else client
        return str(self.certs[f"{name}_cert"]), str(self.certs[f"{name}_key"])

    def ssl_context(self, client: Optional[str] = "client", plane: str = "business") -> ssl.SSLContext:
        """Trusts the plane's CA; presents `client`: "client" (the plane's own client certificate), "revoked",
        "business" / "management" / "metrics" (that plane's client certificate), or None."""
        ctx = ssl.create_default_context(cafile=str(self.certs[f"{plane}_ca"]))
        files = self._client_files(client, plane)
        if files:
            ctx.load_cert_chain(*files)
        return ctx

    def openai_client(self, *, async_client: bool = False, **kw):
        """The official `openai` client over mutual TLS (the client certificate goes in an SSLContext:
        httpx 0.28's `cert=(cert, key)` silently drops it and the server refuses the handshake)."""
        import openai
        if async_client:
            return openai.AsyncOpenAI(base_url=self.base_url + "/v1", api_key="x",
                                      http_client=openai.DefaultAsyncHttpxClient(verify=self.ssl_context()), **kw)
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key="x",
                             http_client=openai.DefaultHttpxClient(verify=self.ssl_context()), **kw)

    def curl_args(self, client: Optional[str] = "client", plane: str = "business") -> list[str]:
        args = ["curl", "-sS", "--max-time", "60", "--cacert", str(self.certs[f"{plane}_ca"])]
        files = self._client_files(client, plane)
        if files:
            args += ["--cert", files[0], "--key", files[1]]
        return args

    def plane_of_url(self, url: str) -> str:
        for plane in ("management", "metrics"):
            if url.startswith(getattr(self, f"{plane}_url")):
                return plane
        return "business"

    def port_of(self, plane: str) -> int:
        return {"business": self.port, "management": self.management_port, "metrics": self.metrics_port}[plane]

    def request(self, method: str, path: str, body=None, *, plane: str = "business", headers: Optional[dict] = None,
                timeout: float = 60) -> tuple[int, bytes]:
        """One HTTPS request with the client certificate: (status, body bytes)."""
        conn = http.client.HTTPSConnection(self.host, self.port_of(plane), context=self.ssl_context(plane=plane),
                                           timeout=timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def start(self, env: Optional[dict] = None, timeout: float = 180) -> "DaemonHandle":
        env = {**(self.env or {}), **(env or {})}
        conf = self.home / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "config.json").write_text(json.dumps(self.config, indent=2))
        os.chmod(conf / "config.json", 0o640)
        self.proc = subprocess.Popen([sys.executable, *self.entry], cwd=str(self.home),
                                     env=daemon_env(self.home, env), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        started = threading.Event()

        def pump():
            for line in self.proc.stdout:
                self.lines.append(line)
                if line.strip() == START_LINE:
                    started.set()
            started.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not started.wait(0.2):
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"daemon did not start within {timeout}s:\n{self.output}")
        if self.proc.poll() is not None or START_LINE not in self.output:
            self.proc.wait(timeout=10)
            pytest.fail(f"daemon exited with {self.proc.returncode}:\n{self.output}")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> Optional[int]:
        return stop_process(self.proc, sig, timeout)


def stop_process(proc: Optional[subprocess.Popen], sig: int = signal.SIGTERM, timeout: float = 60) -> Optional[int]:
    """Sends `sig`, waits up to `timeout` s, then kills; the exit code (None if it never started)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def new_daemon(home: Path, model_dir: Path, **overrides) -> DaemonHandle:
    """A configured (not yet started) daemon in `home` with fresh certs and free ports."""
    env = overrides.pop("env", None)
    entry = tuple(overrides.pop("entry", None) or DaemonHandle.entry)
    certs = gen_certs(home, in_process=overrides.pop("in_process_certs", False))
    return DaemonHandle(home=home, config=make_config(model_dir, **overrides), certs=certs, env=env, entry=entry)


@pytest.fixture(scope="module")
def daemon_factory(tmp_path_factory):
    started: list[DaemonHandle] = []

    def factory(model_dir: Path, **overrides) -> DaemonHandle:
        home = tmp_path_factory.mktemp("home")
        h = new_daemon(home, Path(model_dir), **overrides)
        started.append(h)
        return h.start()

    yield factory
    for h in started:
        h.stop()


@pytest.fixture(scope="package")
def chat_daemon(tmp_path_factory, tiny_model) -> DaemonHandle:
    """One daemon shared by the modules that only send chat, Responses and Messages requests
    (test_chat_completions, test_responses_and_messages): a tiny qwen2 model, room for 4096-token sequences, a
    Responses store of 8. A daemon start less; their checks are per request or deltas of the metrics. Stopped
    when the e2e tests end (idle until then: no CPU)."""
    h = new_daemon(tmp_path_factory.mktemp("home"), tiny_model("qwen2"),
                   deploy={"maxSeqLen": 4096, "maxInputTokenLen": 3072}, server={"responsesStoreSize": 8})
    try:
        yield h.start()
    finally:
        h.stop()


# the capped daemon's connection cap (test_hardening floods it)
CAPPED_MAX_LINK_NUM = 20


@pytest.fixture(scope="package")
def capped_daemon(tmp_path_factory, tiny_model) -> DaemonHandle:
    """One daemon shared by the modules that throw fuzzed and hostile requests at it (test_hardening,
    test_openapi_fuzz): a tiny qwen2 model whose answers are at most 4 tokens whatever a request asks
    (maxIterTimes 4), CAPPED_MAX_LINK_NUM connections, and a typo'd ModelConfig key (warned about at start). Each
    of their tests ends by checking the daemon still serves. Stopped when the e2e tests end."""
    h = new_daemon(tmp_path_factory.mktemp("home"), tiny_model("qwen2"), server={"maxLinkNum": CAPPED_MAX_LINK_NUM},
                   model={"npuMemSzie": 8}, schedule={"maxIterTimes": 4})
    try:
        yield h.start()
    finally:
        h.stop()


@pytest.fixture(scope="module")
def tiny_daemon(daemon_factory, tiny_model) -> DaemonHandle:
    """One daemon per module on a tiny random qwen2 model with the default config."""
    return daemon_factory(tiny_model("qwen2"))
