"""Shared by the load, soak and fault tests: benchmarks.loadgen pointed at a DaemonHandle, /v1/status polling,
process measurements from /proc."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from benchmarks.loadgen import LoadConfig

from .conftest import DaemonHandle


# ModelConfig[0] overrides for these daemons: a KV cache of ~1,700 blocks (0.1 GB on the tiny model) instead of a
# share of the machine's RAM: start-up in a second instead of ~15 s, and "every block free" is checked over all
SMALL_KV = {"npuMemSize": 0.1}


def load_config(h: DaemonHandle, **kw) -> LoadConfig:
    """A LoadConfig for the daemon `h` over mutual TLS."""
    return LoadConfig(url=h.base_url, model=h.model_name, ca=str(h.certs["ca"]), cert=str(h.certs["client_cert"]),
                      key=str(h.certs["client_key"]), **kw)


def engine_status(h: DaemonHandle) -> dict:
    status, raw = h.request("GET", "/v1/status", plane="management")
    assert status == 200, raw
    return json.loads(raw)["resource"]


def wait_status(h: DaemonHandle, pred, timeout: float = 60.0) -> dict:
    """Polls /v1/status until pred(resource) holds; fails with the last resource after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    res = engine_status(h)
    while not pred(res):
        assert time.monotonic() < deadline, f"/v1/status never reached the expected state: {res}"
        time.sleep(0.05)
        res = engine_status(h)
    return res


def all_blocks_free(res: dict) -> bool:
    return (res["freeNpuBlockNums"] == res["totalNpuBlockNums"] and res["runningRequestNum"] == 0
            and res["waitingRequestNum"] == 0)


def wait_all_blocks_free(h: DaemonHandle, timeout: float = 60.0) -> dict:
    return wait_status(h, all_blocks_free, timeout)


def metric_value(h: DaemonHandle, name: str) -> float:
    """One labelled series of the daemon's /metrics (the model_name label), e.g. request_failed_total."""
    status, raw = h.request("GET", "/metrics", plane="metrics")
    assert status == 200
    for line in raw.decode().splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} is not in /metrics")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))
