"""Per-matmul times of the own block kernel (packed GGUF Q8_0/Q5_0/Q6_K blocks, csrc/block_gemm.cpp) at every
instruction set this CPU runs and both activation modes (int8: integer block dots; float: float32 math), beside
torch's bf16 matmul, on the demo model's shapes and block widths (Qwen2.5-0.5B: qkv 1152x896 with a Q8_0 v part,
o 896x896 Q5_0, gate_up 9728x896 Q5_0, down 896x4864 Q6_K, lm_head 151936x896 Q5_0 (the tied embedding)).

    PYTHONPATH=. python benchmarks/bench_block_kernel.py [--threads 2] [--rows 1,16] [--reps 20] [--isas avx2,...]
        [--acts int8,float] [--shapes qkv,o,gate_up,down,lm_head]

Times are the minimum over `--reps` calls (the kernel's own cost; a shared machine's neighbours show in medians);
each cell's calls are interleaved with the other cells' of the same shape and row count.
"""
from __future__ import annotations

import argparse
import time

import torch

from mindie_like.backend_atb import cpu_kernels
from mindie_like.backend_atb.quant.block_weight import BlockInt8Weight

# name: (N, K, value range of q (the block format's), group)
SHAPES = {"qkv": (1152, 896, 128, 32), "o": (896, 896, 16, 32), "gate_up": (9728, 896, 16, 32),
          "down": (896, 4864, 32, 16), "lm_head": (151936, 896, 16, 32)}


def interleaved_best_ms(fs, reps):
    for f in fs:
        f()
    best = [float("inf")] * len(fs)
    for _ in range(reps):
        for i, f in enumerate(fs):
            t = time.perf_counter()
            f()
            best[i] = min(best[i], time.perf_counter() - t)
    return [b * 1e3 for b in best]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="1,16")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--isas", default="", help="comma list (default: every ISA this CPU runs)")
    ap.add_argument("--acts", default="int8,float")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--no-torch", action="store_true", help="skip torch's bf16 matmul column")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    mod = cpu_kernels.load()
    if mod is None:
        raise SystemExit("no CPU kernels here")
    isas = a.isas.split(",") if a.isas else list(cpu_kernels.ISAS[:int(mod.cpu_isa()) + 1])
    acts = a.acts.split(",")
    cols = [(i, act) for i in isas for act in acts]
    print(f"threads {a.threads}; ms per matmul (min of {a.reps}, interleaved)")
    print("| shape | bits | B/weight | rows | " + " | ".join(f"{i} {act}" for i, act in cols) +
          ("" if a.no_torch else " | torch bf16") + " |")
    print("|---|---|---|---|" + "---|" * (len(cols) + (0 if a.no_torch else 1)))
    for name in a.shapes.split(","):
        N, K, r, G = SHAPES[name]
        g = torch.Generator().manual_seed(N + K)
        q = torch.randint(-r, r, (N, K), dtype=torch.int8, generator=g)
        s = torch.rand(N, K // G, generator=g) / 100
        ws = [BlockInt8Weight(q, s, None, G, dtype=torch.bfloat16, isa=i, act=act) for i, act in cols]
        dense = None if a.no_torch else torch.randn(N, K, generator=g).bfloat16()
        del q
        for M in (int(x) for x in a.rows.split(",")):
            x = torch.randn(M, K, generator=g).bfloat16()
            fs = [lambda w=w: w.quant_linear(x) for w in ws]
            if dense is not None:
                fs.append(lambda: torch.nn.functional.linear(x, dense))
            cells = interleaved_best_ms(fs, a.reps)
            print(f"| {name} {N}x{K} | {ws[0].bits} | {ws[0].nbytes / (N * K):.3f} | {M} | " +
                  " | ".join(f"{c:.3f}" for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
