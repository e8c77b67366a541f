"""OpenMP settings for the daemon process, applied before torch (and with it libgomp) is loaded.

The engine thread's OpenMP team and the asyncio event loop share the host's cores. By default a libgomp worker
spins after each parallel region (GOMP_SPINCOUNT 300,000 iterations, fractions of a millisecond), and a decode
step is hundreds of small parallel regions: on a 2-core host the spinning worker holds the core the event loop
needs to detokenize and write the previous token's SSE chunk, so the streamed inter-token latency exceeds the
engine's own step time. OMP_WAIT_POLICY=passive makes a worker sleep as soon as its region ends.

An operator's own OMP_WAIT_POLICY or GOMP_SPINCOUNT is kept (set OMP_WAIT_POLICY=active for the old behaviour).
Tensor-parallel worker processes inherit the daemon's environment.
"""
from __future__ import annotations

from typing import MutableMapping

DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}
OPERATOR_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def set_openmp_defaults(environ: MutableMapping[str, str]) -> dict:
    """Sets DEFAULTS in `environ` unless the operator chose a wait policy; returns what was set."""
    if any(k in environ for k in OPERATOR_KEYS):
        return {}
    environ.update(DEFAULTS)
    return dict(DEFAULTS)
