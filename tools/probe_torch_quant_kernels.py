"""Which shapes and dtypes torch's CPU weight-only kernels get wrong or crash on, on this CPU and this torch.

Each case runs ``aten._weight_int8pack_mm`` (int8 weights, one scale per output channel) or
``aten._weight_int4pack_mm_for_cpu`` (int4, grouped scales and zeros) on random data and compares the result with a
float32 dequantize-and-matmul. The cases run in a child process that reports one line per case; when the child
dies (SIGSEGV, SIGILL, ...) the case it was running is recorded as a crash and a new child continues after it, so
one crash does not hide the others.

    python tools/probe_torch_quant_kernels.py              # the default sweep, a table of the failures
    python tools/probe_torch_quant_kernels.py --int8 bf16 50 104 1   # one case: N K M

The findings on the machines this project runs on are in docs/quantization.md ("torch's CPU kernels").
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys

TOL = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 5e-3}


def int8_case(dtype: str, N: int, K: int, M: int, offset: int = 0) -> float:
    """Relative error of one int8 product; `offset` elements in front of x move its start off alignment."""
    import torch
    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(N * 1000003 + K * 101 + M)
    w = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
    s = (torch.rand(N, generator=g) + 0.5).to(dt) / 64
    x = torch.randn(M * K + offset, generator=g).to(dt)[offset:].view(M, K)
    y = torch.ops.aten._weight_int8pack_mm(x, w, s)
    ref = x.float() @ (w.float() * s.float()[:, None]).t()
    return ((y.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()


def int4_case(dtype: str, N: int, K: int, M: int, group: int) -> float:
    import torch
    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(N * 1000003 + K * 101 + M + group)
    q = torch.randint(0, 16, (N, K), dtype=torch.int32, generator=g)
    G = K // group
    s = ((torch.rand(N, G, generator=g) + 0.5) / 16).to(dt)
    z = ((torch.rand(N, G, generator=g) - 0.5) / 4).to(dt)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    sz = torch.stack((s.t(), z.t()), dim=-1).contiguous()
    x = torch.randn(M, K, generator=g).to(dt)
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group, sz)
    wf = (q.float() - 8) * s.float().repeat_interleave(group, 1) + z.float().repeat_interleave(group, 1)
    ref = x.float() @ wf.t()
    return ((y.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()


def default_cases():
    dts = ("bfloat16", "float16", "float32")
    Ks = (8, 13, 16, 24, 40, 48, 96, 100, 104, 112, 120, 128, 136, 896)
    Ns = (1, 3, 4, 5, 8, 48, 50, 56)
    Ms = (1, 2, 3, 4, 5, 17)
    cases = [["int8", d, n, k, m, 0] for d, k, n, m in itertools.product(dts, Ks, Ns, Ms)]
    # misaligned activations (a view starting 8 elements into its buffer) where the shape itself is fine
    cases += [["int8", d, n, k, m, 8] for d, k, n, m in itertools.product(dts, (16, 128, 896), (4, 50), (1, 5))]
    # int4: N must be a multiple of 16 for the packing; K a multiple of the group
    cases += [["int4", d, n, k, m, gs] for d, gs, n, m in itertools.product(dts, (32, 64, 128, 256), (16, 48),
                                                                             (1, 3, 17)) for k in (gs, 3 * gs)]
    return cases


def child(cases):
    """Runs the cases in order, one result line each (flushed before the next starts)."""
    for c in cases:
        print("START " + json.dumps(c), flush=True)
        try:
            err = int8_case(*c[1:]) if c[0] == "int8" else int4_case(*c[1:])
            print("DONE " + json.dumps({"case": c, "err": err}), flush=True)
        except Exception as e:  # a refusal (TORCH_CHECK) is an answer too
            print("DONE " + json.dumps({"case": c, "error": f"{type(e).__name__}: {str(e)[:120]}"}), flush=True)


def run(cases, timeout: float = 600.0):
    """[{case, err | error | crash}] for every case; children restart after the case that killed them."""
    results, todo = [], list(cases)
    while todo:
        p = subprocess.run([sys.executable, __file__, "--child"], input=json.dumps(todo), capture_output=True,
                           text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
        started = None
        for line in p.stdout.splitlines():
            if line.startswith("START "):
                started = json.loads(line[6:])
            elif line.startswith("DONE "):
                results.append(json.loads(line[5:]))
                started = None
        done = len(results) - (len(cases) - len(todo))
        if p.returncode == 0 and started is None:
            todo = todo[done:]
            continue
        crash = f"exit {p.returncode}" + (f" (signal {-p.returncode})" if p.returncode < 0 else "")
        results.append({"case": started or todo[done], "crash": crash})
        todo = todo[done + 1:]
    return results


def describe(r) -> str:
    c = r["case"]
    what = (f"int8 {c[1]:8s} N={c[2]:<4d} K={c[3]:<4d} M={c[4]:<3d}" + (f" x offset {c[5]}" if c[5] else "")
            if c[0] == "int8" else f"int4 {c[1]:8s} N={c[2]:<4d} K={c[3]:<4d} M={c[4]:<3d} group={c[5]}")
    if "crash" in r:
        return f"{what}  CRASH {r['crash']}"
    if "error" in r:
        return f"{what}  refused: {r['error']}"
    return f"{what}  wrong: rel err {r['err']:.3g}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--int8", nargs=4, metavar=("DTYPE", "N", "K", "M"), help="one int8 case")
    ap.add_argument("--json", action="store_true", help="print every result as JSON")
    a = ap.parse_args()
    if a.child:
        return child(json.loads(sys.stdin.read()))
    import torch
    dts = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
    cases = ([["int8", dts.get(a.int8[0], a.int8[0])] + [int(v) for v in a.int8[1:]] + [0]] if a.int8
             else default_cases())
    res = run(cases)
    if a.json:
        print(json.dumps(res))
        return
    bad = [r for r in res if "crash" in r or "error" in r or r["err"] > TOL[r["case"][1]] or r["err"] != r["err"]]
    print(f"torch {torch.__version__}, ATen CPU capability {torch.backends.cpu.get_cpu_capability()}: "
          f"{len(res)} cases, {len(bad)} crash or wrong")
    for r in bad:
        print(describe(r))


if __name__ == "__main__":
    main()
