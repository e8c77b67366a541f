"""The engine's OpenMP team on a host whose cores it shares with the event loop.

libgomp's own wait policy is kept (a worker spins ~300,000 iterations after a parallel region, then sleeps): a
decode step is hundreds of back-to-back regions, and a worker put to sleep after each one costs the step ~45%
(OMP_WAIT_POLICY=passive measured 25.6 against 19.2 ms a step at one stream on 2 cores, through the daemon).
An operator's OMP_WAIT_POLICY or GOMP_SPINCOUNT is libgomp's to read; nothing here overrides it.
"""
from __future__ import annotations


def release_openmp_pool() -> bool:
    """Ends the calling thread's OpenMP worker threads (libgomp's omp_pause_resource_all); returns whether it did.

    libgomp counts every thread of every OpenMP team in the process, and once that count exceeds the cores it
    caps the spin before a worker sleeps at ~100 iterations, whatever the wait policy: each of a decode step's
    hundreds of parallel regions then wakes a sleeping worker with a futex. Loading the model in one thread and
    stepping it in another leaves two teams, and the step ran ~45% slower (21 -> 31 ms on 2 cores, 30k context
    switches a second). The thread that hands its work to another calls this; a later parallel region in it
    starts a new team."""
    import ctypes
    try:
        lib = ctypes.CDLL(None)             # the process' symbols: the OpenMP runtime torch loaded
        pause = lib.omp_pause_resource_all
    except (OSError, AttributeError):
        return False
    pause.argtypes, pause.restype = [ctypes.c_int], ctypes.c_int
    return pause(1) == 0                    # omp_pause_soft


def run_single_threaded() -> None:
    """Makes the calling thread's torch ops run on it alone (OpenMP and MKL) without changing torch's thread count
    for other threads: a helper thread whose parallel region started a team of its own would add to libgomp's
    count of OpenMP threads (see release_openmp_pool). For a thread pool's initializer."""
    import ctypes
    import os

    import torch
    torch.get_num_threads()                 # torch's per-thread set-up first: it would undo the calls below
    found = ctypes.CDLL(None)
    torch_cpu = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    for name in ("omp_set_num_threads", "MKL_Set_Num_Threads_Local"):    # MKL's own count, this thread's
        fn = getattr(found, name, None)
        if fn is None and os.path.exists(torch_cpu):
            fn = getattr(ctypes.CDLL(torch_cpu), name, None)
        if fn is not None:
            fn.argtypes = [ctypes.c_int]
            fn(1)
