"""A hung tensor-parallel worker (CPU, gloo, 2 ranks): the heartbeat watchdog breaks the group.

Its own module: a process holds one tensor-parallel group at a time, and test_tensor_parallel.py's are closed
when that module ends.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


from tests.support.driver import Driver  # noqa: E402
from test_tensor_parallel import engine_config  # noqa: E402

from mindie_like.backend_atb import ModelRunner  # noqa: E402
from mindie_like.engine.types import BackendFailure  # noqa: E402


def test_hung_worker_fails_the_group(tiny_model):
    """SIGSTOP a worker: its heartbeat stops, the watchdog breaks the group after the heartbeat timeout, the
    failure listener is told, the next step raises BackendFailure, and the worker is gone (killed and reaped)."""
    tp = ModelRunner.load(engine_config(tiny_model("qwen3"), 2, tp_heartbeat_timeout=2))
    try:
        heard: list[str] = []
        tp.add_failure_listener(heard.append)
        d = Driver(tp, num_blocks=8)
        d.step([("a", [5, 6, 7])])
        pid = tp.worker_pids[0]
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        while not heard and time.monotonic() - t0 < 60:
            time.sleep(0.1)
        assert heard and "sent no heartbeat" in heard[0] and f"pid {pid}" in heard[0]
        with pytest.raises(BackendFailure, match="no heartbeat"):
            d.step([("a", [8])])
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    finally:
        tp.close()


RANK0 = """
import sys, time
from mindie_like.backend_atb import ModelRunner
from mindie_like.engine.types import EngineConfig
r = ModelRunner.load(EngineConfig(model_path=sys.argv[1], dtype="float32", device="cpu", world_size=2,
                                  device_ids=[0, 1], num_threads=1))
print(r.worker_pids[0], flush=True)
time.sleep(600)
"""


def dead(pid: int) -> bool:
    """Gone, or a zombie (killed; waiting for whoever inherited it to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_workers_die_with_rank_0(tiny_model):
    """rank 0 SIGKILLed (no chance to clean up): its worker dies too (PR_SET_PDEATHSIG, stdin EOF)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "MINDIE_LIKE_NO_PROGRESS": "1"}
    rank0 = subprocess.Popen([sys.executable, "-c", RANK0, str(tiny_model("qwen3"))], stdout=subprocess.PIPE,
                             text=True, env=env)
    try:
        worker = int(rank0.stdout.readline())
        assert not dead(worker)
    finally:
        rank0.kill()
        rank0.wait()
    t0 = time.monotonic()
    while not dead(worker) and time.monotonic() - t0 < 30:
        time.sleep(0.1)
    assert dead(worker)
