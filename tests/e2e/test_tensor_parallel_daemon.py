"""The daemon with worldSize 2 on the CPU (gloo): one worker process beside the daemon (rank 0).

- a chat request works over mutual TLS;
- a worker killed mid-request: the streaming request ends with an error event, a concurrent non-streaming one
  gets HTTP 500, /health answers 503, the daemon exits 1 within a bound and leaves no process behind;
- SIGTERM stops the daemon and its worker (exit 0);
- refusals before anything starts (exit 2, one line): npuDeviceIds vs worldSize, a worldSize the model's heads do
  not divide.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

from .conftest import daemon_env, new_daemon

TP = dict(model={"worldSize": 2, "device": "cpu", "tpHeartbeatTimeout": 5, "npuMemSize": 0.05},
          backend={"npuDeviceIds": [[0, 1]]},
          env={"MINDIE_LIKE_NO_PROGRESS": "1"})
EXIT_BOUND_S = 30


def children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out.update(int(x) for x in (task / "children").read_text().split())
        except OSError:
            pass
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def chat(daemon, **kw):
    body = {"model": daemon.model_name, "messages": [{"role": "user", "content": "Count to ten."}],
            "temperature": 0, **kw}
    return daemon.request("POST", "/v1/chat/completions", body, timeout=120)


def test_chat_then_a_killed_worker_fails_cleanly(daemon_factory, tiny_model):
    d = daemon_factory(tiny_model("qwen2"), **TP)
    workers = children(d.proc.pid)
    assert len(workers) == 1, d.output
    worker = workers.pop()

    client = d.openai_client()
    r = client.chat.completions.create(model=d.model_name, messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=8, temperature=0)
    assert r.choices[0].finish_reason in ("length", "stop") and r.usage.completion_tokens >= 1

    plain: dict = {}

    def non_streaming():
        plain["status"], plain["body"] = chat(d, max_tokens=400, ignore_eos=True)
    t = threading.Thread(target=non_streaming)
    t.start()
    stream = client.chat.completions.create(model=d.model_name, messages=[{"role": "user", "content": "Go on."}],
                                            max_tokens=400, temperature=0, stream=True,
                                            extra_body={"ignore_eos": True})
    it = iter(stream)
    next(it)
    os.kill(worker, signal.SIGKILL)
    t_kill = time.monotonic()
    with pytest.raises(openai.APIError):
        for _ in it:
            pass
    t.join(60)
    assert plain["status"] == 500, plain
    err = json.loads(plain["body"])
    assert "rank 1" in err["error"], err
    status, _ = d.request("GET", "/health", plane="management")
    assert status == 503
    rc = d.proc.wait(timeout=EXIT_BOUND_S)
    assert rc == 1, d.output
    assert time.monotonic() - t_kill < EXIT_BOUND_S
    assert "tensor-parallel rank 1" in d.output
    assert not alive(worker)


def test_sigterm_stops_every_rank(daemon_factory, tiny_model):
    d = daemon_factory(tiny_model("qwen2"), **TP)
    workers = children(d.proc.pid)
    assert len(workers) == 1
    status, body = chat(d, max_tokens=4)
    assert status == 200, body
    assert d.stop(signal.SIGTERM) == 0, d.output
    assert not any(alive(p) for p in workers)


def refusal(tmp_path, model_dir, **overrides) -> subprocess.CompletedProcess:
    h = new_daemon(tmp_path, model_dir, in_process_certs=True, **overrides)
    conf = tmp_path / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "config.json").write_text(json.dumps(h.config))
    os.chmod(conf / "config.json", 0o640)
    return subprocess.run([sys.executable, "-m", "mindie_like.daemon"], cwd=str(tmp_path), env=daemon_env(tmp_path),
                          capture_output=True, text=True, timeout=120)


def test_device_count_must_match_world_size(tmp_path, tiny_model):
    p = refusal(tmp_path, tiny_model("qwen2"), model={"worldSize": 2}, backend={"npuDeviceIds": [[0]]})
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == "BackendConfig.npuDeviceIds: [0] has 1 devices but worldSize is 2"


def test_world_size_must_divide_the_heads(tmp_path, tiny_model):
    p = refusal(tmp_path, tiny_model("qwen2"), model={"worldSize": 3, "device": "cpu"},
                backend={"npuDeviceIds": [[0, 1, 2]]})
    assert p.returncode == 2, p.stdout + p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert line.startswith("BackendConfig.ModelDeployConfig.ModelConfig[0].worldSize: worldSize 3 does not divide")
    assert "num_attention_heads 4" in line and "num_key_value_heads 2" in line


@pytest.mark.multinode
def test_two_nodes_on_one_host(tmp_path, tiny_model):
    """multiNodesInferEnabled with NNODES=2 on one host: node 0's daemon serves (global rank 0), node 1's daemon
    only runs global rank 1. A chat request works; SIGTERM on node 0 stops node 1's rank, and node 1's daemon
    exits 0."""
    from .conftest import free_ports
    h = new_daemon(tmp_path, tiny_model("qwen2"), in_process_certs=True,
                   model={"worldSize": 1, "device": "cpu", "npuMemSize": 0.05},
                   backend={"multiNodesInferEnabled": True, "npuDeviceIds": [[0]]})
    port = free_ports(1)[0]
    rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NNODES": "2"}
    h.env = {**rendezvous, "NODE_RANK": "0", "MINDIE_LIKE_NO_PROGRESS": "1"}
    node1 = None
    try:
        (tmp_path / "conf").mkdir(exist_ok=True)
        (tmp_path / "conf" / "config.json").write_text(json.dumps(h.config))
        os.chmod(tmp_path / "conf" / "config.json", 0o640)
        node1 = subprocess.Popen([sys.executable, "-m", "mindie_like.daemon"], cwd=str(tmp_path),
                                 env=daemon_env(tmp_path, {**rendezvous, "NODE_RANK": "1"}), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
        h.start()
        status, body = chat(h, max_tokens=4)
        assert status == 200, body
        remote_ranks = children(node1.pid)
        assert len(remote_ranks) == 1
        assert h.stop(signal.SIGTERM) == 0, h.output
        assert node1.wait(timeout=EXIT_BOUND_S) == 0, node1.stdout.read()
        assert not any(alive(p) for p in remote_ranks)
    finally:
        h.stop(signal.SIGKILL)
        if node1 is not None and node1.poll() is None:
            node1.kill()
