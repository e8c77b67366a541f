"""Per-matmul times of the own block kernel (grouped int8, the exact form of GGUF Q8_0/Q5_0/Q6_K) at every
instruction set this CPU runs, beside the own per-channel int8 kernel and torch's bf16 matmul, on the demo model's
shapes (Qwen2.5-0.5B: qkv 1152x896, o 896x896, gate_up 9728x896, down 896x4864).

    PYTHONPATH=. python benchmarks/bench_block_kernel.py [--threads 2] [--rows 1,16] [--reps 50]

Times are the minimum over `--reps` calls (the kernel's own cost; a shared machine's neighbours show in medians).
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from mindie_like.backend_atb import cpu_kernels
from mindie_like.backend_atb.quant import quantize_linear_weight
from mindie_like.backend_atb.quant.block_weight import BlockInt8Weight

SHAPES = {"qkv": (1152, 896), "o": (896, 896), "gate_up": (9728, 896), "down": (896, 4864)}


def best_ms(f, reps):
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return min(ts) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="1,16")
    ap.add_argument("--reps", type=int, default=50)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    mod = cpu_kernels.load()
    if mod is None:
        raise SystemExit("no CPU kernels here")
    isas = cpu_kernels.ISAS[:int(mod.cpu_isa()) + 1]
    print(f"threads {a.threads}, ISAs {', '.join(isas)}; ms per matmul (min of {a.reps})")
    print("| shape | rows | " + " | ".join(f"block {i}" for i in isas) + " | own int8 per-channel | torch bf16 |")
    print("|---|---|" + "---|" * (len(isas) + 2))
    for name, (N, K) in SHAPES.items():
        g = torch.Generator().manual_seed(N + K)
        q = torch.randint(-16, 16, (N, K), dtype=torch.int8, generator=g)
        s = torch.rand(N, K // 32, generator=g) / 100
        blocks = {i: BlockInt8Weight(q, s, None, 32, dtype=torch.bfloat16, isa=i) for i in isas}
        os.environ["MINDIE_LIKE_CPU_KERNELS"] = "1"
        w8 = quantize_linear_weight(torch.randn(N, K, generator=g), "w8a16", dtype=torch.bfloat16)
        dense = torch.randn(N, K, generator=g).bfloat16()
        for M in (int(r) for r in a.rows.split(",")):
            x = torch.randn(M, K, generator=g).bfloat16()
            cells = [best_ms(lambda w=w: w.quant_linear(x), a.reps) for w in blocks.values()]
            cells.append(best_ms(lambda: w8.quant_linear(x), a.reps))
            cells.append(best_ms(lambda: torch.nn.functional.linear(x, dense), a.reps))
            print(f"| {name} {N}x{K} | {M} | " + " | ".join(f"{c:.3f}" for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
