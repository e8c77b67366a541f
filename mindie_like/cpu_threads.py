"""The engine's OpenMP team on a host whose cores it shares with the event loop (and, often, other processes).

A decode step is hundreds of back-to-back parallel regions. How long a libgomp worker spins after a region before
it sleeps decides the step's speed both ways (one stream through the daemon, demo GGUF, 2-core Zen 4):
    quiet:  OMP_WAIT_POLICY=passive 34 ms a step, libgomp's default spin (300,000) 21 ms, GOMP_SPINCOUNT=30000 18.5
    loaded (other processes want the cores): passive 70 ms, 300,000 280 ms, 30,000 96 ms
A worker that spins long holds a core that the thread it waits for needs once the host is oversubscribed; one that
sleeps at once pays a futex wake per region. The daemon sets GOMP_SPINCOUNT=30000 before torch loads libgomp,
unless the operator chose OMP_WAIT_POLICY or GOMP_SPINCOUNT; tensor-parallel worker processes inherit it.
"""
from __future__ import annotations

from typing import MutableMapping

DEFAULTS = {"GOMP_SPINCOUNT": "30000"}
OPERATOR_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def set_openmp_defaults(environ: MutableMapping[str, str]) -> dict:
    """Sets DEFAULTS in `environ` unless the operator chose a wait policy; returns what was set."""
    if any(k in environ for k in OPERATOR_KEYS):
        return {}
    environ.update(DEFAULTS)
    return dict(DEFAULTS)


def release_openmp_pool() -> bool:
    """Ends the calling thread's OpenMP worker threads (libgomp's omp_pause_resource_all); returns whether it did.

    libgomp counts every thread of every OpenMP team in the process, and once that count exceeds the cores it
    caps the spin before a worker sleeps at ~100 iterations, whatever the wait policy: each of a decode step's
    hundreds of parallel regions then wakes a sleeping worker with a futex. Loading the model in one thread and
    stepping it in another leaves two teams, and the step ran ~45% slower (21 -> 31 ms on 2 cores, 30k context
    switches a second). The thread that hands its work to another calls this; a later parallel region in it
    starts a new team."""
    pause = _runtime_function("omp_pause_resource_all")
    return pause is not None and pause(1) == 0          # omp_pause_soft


def run_single_threaded() -> None:
    """Makes the calling thread's torch ops run on it alone (OpenMP and MKL) without changing torch's thread count
    for other threads: a helper thread whose parallel region started a team of its own would add to libgomp's
    count of OpenMP threads (see release_openmp_pool). For a thread pool's initializer."""
    import torch
    torch.get_num_threads()                 # torch's per-thread set-up first: it would undo the calls below
    for name in ("omp_set_num_threads", "MKL_Set_Num_Threads_Local"):    # MKL's own count, this thread's
        fn = _runtime_function(name)
        if fn is not None:
            fn(1)


def _runtime_function(name: str):
    """`name(int) -> int` from the threading runtimes torch loaded (libgomp among the process' global symbols; MKL
    linked into libtorch_cpu), or None where this build has no such function."""
    import ctypes
    import os

    import torch
    fn = getattr(ctypes.CDLL(None), name, None)
    if fn is None:
        torch_cpu = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
        if os.path.exists(torch_cpu):
            fn = getattr(ctypes.CDLL(torch_cpu), name, None)
    if fn is not None:
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
    return fn
