"""Start-up refusals (exit 2, one line), --check-config, and SIGTERM with a request in flight."""
from __future__ import annotations

import datetime as dt
import json
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from mindie_like.server import certgen

from .conftest import REPO, daemon_env, new_daemon


LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \[[A-Z]+\] ")   # the daemon's log format


def run_daemon(home, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "mindie_like.daemon", *args], cwd=str(home),
                          env=daemon_env(home), capture_output=True, text=True, timeout=timeout)


def write_conf(h):
    (h.home / "conf").mkdir(parents=True, exist_ok=True)
    (h.home / "conf" / "config.json").write_text(json.dumps(h.config))
    (h.home / "conf" / "config.json").chmod(0o640)


@pytest.fixture
def configured(tmp_path, tiny_model):
    return new_daemon(tmp_path / "home", tiny_model("qwen2"), in_process_certs=True)


def test_invalid_config_is_refused_with_one_line_and_exit_2(configured):
    configured.config["ServerConfig"]["port"] = 80
    write_conf(configured)
    r = run_daemon(configured.home)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["ServerConfig.port: 80 is not in [1024, 65535]"]
    assert "Daemon start success!" not in r.stdout


def test_check_config_prints_the_effective_config(configured):
    write_conf(configured)
    r = run_daemon(configured.home, "--check-config")
    assert r.returncode == 0, r.stderr
    eff = json.loads(r.stdout)
    assert eff["ServerConfig"]["maxJsonDepth"] == 10                       # a default filled in
    assert eff["BackendConfig"]["ScheduleConfig"]["maxIterTimes"] == 512
    assert eff["BackendConfig"]["npuDeviceIds"] == [[0]]


def test_check_config_reports_every_problem_the_start_would_refuse_in_one_run(configured):
    """Schema errors of several sections, a missing weights folder, a quantization value the backend has no
    kernel for: one line each, exit 2, from --check-config and from the daemon's start alike."""
    m = configured.config["BackendConfig"]["ModelDeployConfig"]["ModelConfig"][0]
    configured.config["ServerConfig"]["port"] = 80
    configured.config["BackendConfig"]["ScheduleConfig"]["cacheBlockSize"] = 96
    m["quantization"] = "int3"
    m["modelWeightPath"] = "no/such/weights"
    write_conf(configured)
    for args in (["--check-config"], []):
        r = run_daemon(configured.home, *args)
        assert r.returncode == 2, r.stderr
        lines = sorted(r.stderr.strip().splitlines())
        assert lines == sorted([
            "ServerConfig.port: 80 is not in [1024, 65535]",
            "BackendConfig.ScheduleConfig.cacheBlockSize: 96 is not a power of two",
            'BackendConfig.ModelDeployConfig.ModelConfig[0].quantization: "int3" is not one of "w8a16", "int8", '
            '"w8", "w4a16", "int4", "w4", "gguf", "none", "float", "off"',
            f"BackendConfig.ModelDeployConfig.ModelConfig[0].modelWeightPath: "
            f"{(configured.home / 'no/such/weights').resolve()} does not exist"]), r.stderr
        assert r.stdout == "" if args else "Daemon start success!" not in r.stdout


def test_check_config_refuses_a_world_size_the_model_cannot_split(configured):
    """Known from the weights' config.json without loading them: the check says what the start would."""
    configured.config["BackendConfig"]["ModelDeployConfig"]["ModelConfig"][0]["worldSize"] = 3
    configured.config["BackendConfig"]["npuDeviceIds"] = [[0, 1, 2]]
    write_conf(configured)
    r = run_daemon(configured.home, "--check-config")
    assert r.returncode == 2 and r.stdout == ""
    problems = [ln for ln in r.stderr.strip().splitlines() if not LOG_LINE.match(ln)]
    assert len(problems) == 1, r.stderr
    line = problems[0]
    assert line.startswith("BackendConfig.ModelDeployConfig.ModelConfig[0].worldSize: worldSize 3 does not divide "
                           "the model's heads"), line


@pytest.mark.parametrize("script", ["serviced_daemon", "mindieservice_daemon"])
def test_bin_wrappers_run_from_the_checkout(configured, script):
    write_conf(configured)
    env = daemon_env(configured.home, {"MINDIE_LIKE_PYTHON": sys.executable})
    env.pop("PYTHONPATH")
    r = subprocess.run([str(REPO / "bin" / script), "--check-config"], cwd="/", env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["BackendConfig"]["ModelDeployConfig"]["ModelConfig"][0]["modelName"] == \
        configured.model_name


def test_config_file_option_wins(configured, tmp_path):
    write_conf(configured)
    other = tmp_path / "other.json"
    cfg = json.loads(json.dumps(configured.config))
    cfg["ServerConfig"]["maxLinkNum"] = 77
    other.write_text(json.dumps(cfg))
    r = run_daemon(configured.home, "--config-file", str(other), "--check-config")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout[r.stdout.index("{"):])["ServerConfig"]["maxLinkNum"] == 77


def test_expired_server_cert_is_refused(configured):
    sec = configured.home / "security"
    ca = certgen.make_ca()
    now = dt.datetime.now(dt.timezone.utc)
    old = certgen.issue_cert(ca, "old server", server=True, not_before=now - dt.timedelta(days=30),
                             not_after=now - dt.timedelta(days=1))
    certgen.write_cert(sec / "certs/server.pem", old.cert)
    certgen.write_key(sec / "keys/server.key.pem", old.key,
                      (sec / "pass/key_pwd.txt").read_text().strip().encode())
    write_conf(configured)
    r = run_daemon(configured.home)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ServerConfig.tlsCert: ") and "expired" in lines[0]


def _open_slow_post(h, total_len: int, first: bytes):
    s = socket.create_connection((h.host, h.port), timeout=60)
    t = h.ssl_context().wrap_socket(s, server_hostname=h.host)
    t.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {h.host}\r\nContent-Type: application/json\r\n"
              f"Content-Length: {total_len}\r\n\r\n".encode() + first)
    return t


def _wait_port_closed(h, tries=300) -> bool:
    for _ in range(tries):
        try:
            socket.create_connection((h.host, h.port), timeout=2).close()
        except OSError:
            return True
        time.sleep(0.1)
    return False


def test_sigterm_with_requests_in_flight(tmp_path, tiny_model):
    """Two slow uploads are in flight at SIGTERM: the daemon stops accepting, the one that completes within the
    grace period gets its answer, the one that never completes is cancelled when the grace period ends, and the
    process exits 0."""
    h = new_daemon(tmp_path / "home", tiny_model("qwen2"), server={"shutdownGracePeriod": 3})
    h.start()
    body = json.dumps({"model": h.model_name, "slow": "x" * 50}).encode()
    finishing = _open_slow_post(h, len(body), body[:10])
    stuck = _open_slow_post(h, 1000, b'{"model":')
    assert h.request("GET", "/health", plane="management")[0] == 200   # the first parts surely arrived
    h.proc.send_signal(signal.SIGTERM)
    assert _wait_port_closed(h), "the daemon still accepts connections after SIGTERM"
    assert h.proc.poll() is None, "the daemon did not wait for the in-flight requests"
    finishing.sendall(body[10:])
    head = finishing.recv(4096)
    finishing.close()
    assert head.startswith(b"HTTP/1.1 "), head        # an answer (404 until the chat route exists), not a reset
    assert h.proc.wait(timeout=60) == 0
    try:
        data = stuck.recv(4096)
    except (ConnectionError, OSError):
        data = b""
    stuck.close()
    assert data == b"" or data.startswith(b"HTTP/1.1 5")    # closed cleanly or told it failed; never hangs
    assert "Daemon start success!" in h.output and "cancelling 1 request" in h.output
