"""The daemon's OpenMP wait policy: passive unless the operator chose one, set before torch loads libgomp."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mindie_like.cpu_threads import set_openmp_defaults

REPO = Path(__file__).resolve().parents[2]


def test_passive_unless_the_operator_chose():
    env = {}
    assert set_openmp_defaults(env) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    for chosen in ({"OMP_WAIT_POLICY": "active"}, {"GOMP_SPINCOUNT": "10000"}):
        env = dict(chosen)
        assert set_openmp_defaults(env) == {}
        assert env == chosen


def test_daemon_sets_it_before_torch_is_imported():
    code = ("import sys, mindie_like.cpu_threads as c; assert 'torch' not in sys.modules; "
            "import mindie_like.daemon as d, os, ctypes; assert d.build_backend and d.build_context; "
            "print(os.environ.get('OMP_WAIT_POLICY'), ctypes.CDLL(None).getenv(b'OMP_WAIT_POLICY') is not None)")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["PASSIVE", "True"]
