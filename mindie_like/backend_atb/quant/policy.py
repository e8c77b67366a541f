"""Per-step choice between the quantized kernels and a dense (bf16) copy, from a crossover measured at start-up.

Weight-only kernels win when a step is memory-bound (few rows: decode of a few streams); past some number of rows
the dense bf16 matmul is faster (on the 2-core EPYC: int8/int4 win at batch 1, bf16 wins at batch 16). At start-up
`measure_crossover` times both paths on the model's own weight shapes for a ladder of row counts and takes the
smallest count from which dense stays faster; `QuantPolicy.choose(rows)` then answers per call. The dense copy
costs the bf16 weight bytes again, so it is kept only when memory allows (`dense_budget_bytes`).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from ..device import free_memory_bytes

log = logging.getLogger(__name__)

LADDER = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128)


@dataclass
class QuantPolicy:
    """`choose(batch_tokens)`: "quant" below the crossover (or when no dense copy exists), "dense" from it on."""
    crossover: float = math.inf           # rows from which the dense path is used; inf = always quantized
    timings: dict = field(default_factory=dict)   # rows -> (quant_ms, dense_ms) medians, from the measurement
    reason: str = ""

    def choose(self, batch_tokens: int) -> str:
        return "dense" if batch_tokens >= self.crossover else "quant"

    def describe(self) -> str:
        c = "never (quantized kernels only)" if math.isinf(self.crossover) else f">= {int(self.crossover)} rows"
        return f"dense path {c}{'; ' + self.reason if self.reason else ''}"


def _time_pair_ms(fa, fb, reps: int) -> tuple[float, float]:
    """Best-of-`reps` times of two functions, interleaved so both see the same neighbours (the minimum is the
    kernel's own cost; medians on a shared machine measure the neighbours)."""
    fa(), fb()                             # warm-up (allocations, kernel selection)
    ta, tb = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        fa()
        t1 = time.perf_counter()
        fb()
        t2 = time.perf_counter()
        ta.append((t1 - t0) * 1e3)
        tb.append((t2 - t1) * 1e3)
    return min(ta), min(tb)


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "npu":
        torch.npu.synchronize(device)  # type: ignore[attr-defined]


def measure_crossover(weights: Sequence, *, ladder: Sequence[int] = LADDER, reps: int = 7,
                      max_ms: float = 6000.0) -> QuantPolicy:
    """Times ``linear`` through each QuantizedWeight's kernel and through its dense copy for each row count.

    `weights`: the QuantizedWeights of one representative layer (with `dense` set). Returns a policy whose
    crossover is the smallest row count from which dense was faster at that count and every larger one measured
    (robust to one noisy point). Gives up extending the ladder after `max_ms` of measuring.
    """
    weights = [w for w in weights if w.dense is not None]
    if not weights:
        return QuantPolicy(reason="no dense copy")
    device = weights[0].device
    dtype = weights[0].dtype
    timings: dict[int, tuple[float, float]] = {}
    t_start = time.perf_counter()
    with torch.inference_mode():
        for m in ladder:
            xs = [torch.randn(m, w.in_features, dtype=dtype, device=device) for w in weights]

            def run_quant():
                for w, x in zip(weights, xs):
                    w.quant_linear(x)
                _sync(device)

            def run_dense():
                for w, x in zip(weights, xs):
                    w.dense_linear(x)
                _sync(device)

            timings[m] = _time_pair_ms(run_quant, run_dense, reps)
            if (time.perf_counter() - t_start) * 1e3 > max_ms:
                break
    crossover = math.inf
    ms = sorted(timings)
    for i, m in enumerate(ms):
        if all(timings[k][1] < timings[k][0] for k in ms[i:]):
            crossover = m
            break
    pol = QuantPolicy(crossover=crossover, timings=timings)
    log.info("quantization crossover on %s: %s; per row count (best quant ms / dense ms): %s", device,
             pol.describe(),
             ", ".join(f"{m}: {q:.2f}/{d:.2f}" for m, (q, d) in sorted(timings.items())))
    return pol


def faster_dense_dtype(weights: Sequence, rows: int = 16, reps: int = 5) -> Optional[torch.dtype]:
    """On CPU with half-precision activations: float32 when a float32 dense matmul (cast in and out) beats the
    half-precision one at `rows` rows (CPUs without AVX512-BF16/AMX run bf16 matmuls on a slow path), else None."""
    weights = [w for w in weights if w.dense is not None]
    if not weights or weights[0].device.type != "cpu" or weights[0].dtype == torch.float32:
        return None
    dtype = weights[0].dtype
    with torch.inference_mode():
        xs = [torch.randn(rows, w.in_features, dtype=dtype) for w in weights]
        d32 = [w.dense.float() for w in weights]

        def half():
            for w, x in zip(weights, xs):
                torch.nn.functional.linear(x, w.dense)

        def f32():
            for d, x in zip(d32, xs):
                torch.nn.functional.linear(x.float(), d).to(dtype)
        t_half, t_f32 = _time_pair_ms(half, f32, reps)
    log.info("dense path at %d rows: %s %.2f ms, float32 %.2f ms", rows, str(dtype).replace("torch.", ""), t_half,
             t_f32)
    return torch.float32 if t_f32 < 0.8 * t_half else None


def dense_allowed(dense_bytes: int, device, fraction: float = 0.3, budget: Optional[int] = None) -> tuple[bool, str]:
    """Keep dense copies only if they fit in `budget` bytes (default: `fraction` of the free memory now)."""
    avail = free_memory_bytes(torch.device(device))
    limit = budget if budget is not None else int(avail * fraction)
    ok = dense_bytes <= limit
    why = (f"dense copies {dense_bytes / 2**20:.0f} MiB {'within' if ok else 'over'} the budget "
           f"{limit / 2**20:.0f} MiB ({avail / 2**20:.0f} MiB free)")
    return ok, why
