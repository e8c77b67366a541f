"""The engine thread's OpenMP team is the process' only one: the thread that loaded the model gives its team up."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mindie_like.cpu_threads import set_openmp_defaults

REPO = Path(__file__).resolve().parents[2]

# In a fresh process (thread counts are the process'): a parallel matmul on the main thread starts its OpenMP
# team; release_openmp_pool ends it; an AsyncEngine whose runner runs parallel matmuls leaves the main thread
# without a team (only the engine thread's own).
SCRIPT = r"""
import os, torch
torch.set_num_threads(2)
def tasks(): return len(os.listdir('/proc/self/task'))
from mindie_like.cpu_threads import release_openmp_pool
base = tasks()
torch.randn(600, 600) @ torch.randn(600, 600)
with_team = tasks()
assert with_team == base + 1, (base, with_team)
assert release_openmp_pool() is True
assert tasks() == base, (base, tasks())

torch.randn(600, 600) @ torch.randn(600, 600)        # the main thread's team again, as after loading a model
assert tasks() == base + 1
import asyncio
from tests.support.engine_fakes import FakeRunner
from mindie_like.engine import AsyncEngine
from mindie_like.engine.types import EngineConfig, SamplingParams
class MatmulRunner(FakeRunner):
    def execute(self, batch):
        torch.randn(600, 600) @ torch.randn(600, 600)
        return super().execute(batch)
engine = AsyncEngine(EngineConfig(model_path="x", block_size=16), MatmulRunner(block_size=16), None)
async def run():
    return [o async for o in engine.generate([1, 2, 3], SamplingParams(max_tokens=3, temperature=0), "r")]
outs = asyncio.run(run())
assert outs[-1].finished
# the engine thread and its team's one worker; the main thread's worker is gone
assert tasks() == base + 2, (base, tasks())
engine.shutdown()
print("ok")
"""


def test_the_engine_thread_owns_the_only_openmp_team():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["ok"]


# A thread pool thread that runs torch matmuls (the MoE experts' split) adds no OpenMP or MKL team of its own.
POOL_SCRIPT = r"""
import os, torch
from concurrent.futures import ThreadPoolExecutor
from mindie_like.cpu_threads import run_single_threaded
torch.set_num_threads(2)
def tasks(): return len(os.listdir('/proc/self/task'))
a, b = torch.randn(600, 600), torch.randn(600, 600)
a @ b
base = tasks()
pool = ThreadPoolExecutor(1, initializer=run_single_threaded)
for dtype in (torch.float32, torch.bfloat16):
    pool.submit(lambda: a.to(dtype) @ b.to(dtype)).result()
    pool.submit(lambda: torch.nn.functional.linear(a.to(dtype), b.to(dtype))).result()
assert pool.submit(torch.get_num_threads).result() == 1
assert torch.get_num_threads() == 2
assert tasks() == base + 1, (base, tasks())           # the pool's thread, no team of its own
print("ok")
"""


def test_a_pool_thread_runs_its_matmuls_alone():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", POOL_SCRIPT], env=env, capture_output=True, text=True, timeout=300,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["ok"]


def test_a_short_spin_unless_the_operator_chose():
    env = {}
    assert set_openmp_defaults(env) == {"GOMP_SPINCOUNT": "30000"}
    for chosen in ({"OMP_WAIT_POLICY": "passive"}, {"GOMP_SPINCOUNT": "300000"}):
        env = dict(chosen)
        assert set_openmp_defaults(env) == {}
        assert env == chosen


def test_the_daemon_sets_it_before_torch_is_imported():
    code = ("import sys, mindie_like.cpu_threads as c; assert 'torch' not in sys.modules; "
            "import mindie_like.daemon as d, os, ctypes; assert d.build_backend and d.build_context; "
            "print(os.environ.get('GOMP_SPINCOUNT'), ctypes.CDLL(None).getenv(b'GOMP_SPINCOUNT') is not None)")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["30000", "True"]
