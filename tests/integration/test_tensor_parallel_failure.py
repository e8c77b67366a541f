"""A hung tensor-parallel worker (CPU, gloo, 2 ranks): the heartbeat watchdog breaks the group.

Its own module: a process holds one tensor-parallel group at a time, and test_tensor_parallel.py's are closed
when that module ends.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "backend"))

from driver import Driver  # noqa: E402
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
