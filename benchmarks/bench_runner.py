#!/usr/bin/env python
"""Single-stream decode speed of the model runner vs transformers `generate` vs the memory-bandwidth bound.

    PYTHONPATH=. python benchmarks/bench_runner.py [--model PATH.gguf|DIR] [--dtype bfloat16] [--steps 64] [--runs 5]

One process, one run of everything: the copy bandwidth (a 512 MiB float32 copy: bytes read + written / time), our
runner's decode step (batch 1, paged KV, after a 32-token prefill), transformers `generate` on the same weights
(the imported safetensors folder), same dtype, same thread count, greedy; decode tok/s from (t(N) - t(1)) / (N - 1)
so the prefill is excluded. Medians over --runs. The bound: copy bandwidth / weight bytes read per decode step.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mindie_like.backend_atb import ForwardBatch, ModelRunner  # noqa: E402
from mindie_like.backend_atb.device import available_cores, cpu_has_fast_bf16  # noqa: E402
from mindie_like.engine.types import EngineConfig  # noqa: E402

DEFAULT_MODEL = str(Path(__file__).resolve().parents[1] / "models" / "qwen2.5-coder-0.5b-instruct" / "qwen2.5-coder-0.5b-instruct.gguf")  # bin/fetch_models
CLOCK = time.perf_counter      # --cpu-time: time.process_time (with --threads 1: CPU time actually received, which
                               # discounts time spent waiting for a core on a shared machine)


def copy_bandwidth(runs: int = 5, mib: int = 512) -> float:
    a = torch.ones(mib * (1 << 20) // 4)
    b = torch.empty_like(a)
    b.copy_(a)
    ts = []
    for _ in range(runs):
        t = CLOCK()
        b.copy_(a)
        ts.append(CLOCK() - t)
    return 2 * a.numel() * 4 / statistics.median(ts)        # bytes read + written per second


def batch_for(tokens, start, blocks, bs):
    n = len(tokens)
    pos = torch.arange(start, start + n)
    slots = torch.tensor([blocks[p // bs] * bs + p % bs for p in pos.tolist()])
    return ForwardBatch(seq_ids=["s"], input_ids=torch.tensor(tokens), positions=pos, query_lens=[n],
                        context_lens=[start + n], block_tables=torch.tensor([blocks], dtype=torch.int32),
                        slot_mapping=slots, logits_indices=torch.tensor([n - 1]))


def ours_decode(runner, prompt, steps) -> list[float]:
    bs = runner.block_size
    blocks = list(range(1, 1 + (len(prompt) + steps + bs) // bs + 1))
    logits = runner.execute(batch_for(prompt, 0, blocks, bs))
    tok, pos, ts = int(logits[0].argmax()), len(prompt), []
    for _ in range(steps):
        b = batch_for([tok], pos, blocks, bs)           # built like the engine does, every step
        t = CLOCK()
        logits = runner.execute(b)
        tok = int(logits[0].argmax())
        ts.append(CLOCK() - t)
        pos += 1
    return ts


def matmul_ceiling(runner, reps: int = 5) -> dict:
    """tok/s of the decode step's matmuls alone (batch 1, same weights): torch F.linear vs the op table's linear."""
    m = runner.model
    ws = [(lin.weight, lin.bias) for lin in m.linears()]
    ws.append((m.lm_head, None))
    out = {}
    with torch.inference_mode():
        for name, fn in (("torch_linear", lambda x, w, b: torch.nn.functional.linear(x.to(w.dtype), w)),
                         ("op_table_linear", lambda x, w, b: m.ops.linear(x, w, b))):
            xs = {w.shape[1]: torch.randn(1, w.shape[1], dtype=m.act_dtype) for w, _ in ws}
            ts = []
            for _ in range(reps):
                t = CLOCK()
                for w, b in ws:
                    fn(xs[w.shape[1]], w, b)
                ts.append(CLOCK() - t)
            out[name] = round(1.0 / statistics.median(ts), 1)
    return out


def hf_decode_tps(model, prompt, steps) -> float:
    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids)

    def gen(n):
        t = CLOCK()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        assert out.shape[1] == len(prompt) + n
        return CLOCK() - t
    t1 = gen(1)
    tn = gen(steps)
    return (steps - 1) / max(1e-9, tn - t1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--compare-decode-stack", action="store_true",
                    help="also time the decode step with the layers run from Python (no C++ decode stack), "
                         "interleaved run by run with the default")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--cpu-time", action="store_true", help="measure process CPU time instead of wall time "
                    "(meaningful with --threads 1 on a busy shared machine)")
    args = ap.parse_args()
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time
    os.environ.setdefault("MINDIE_LIKE_NO_PROGRESS", "1")
    threads = args.threads or available_cores()
    cfg = EngineConfig(model_path=args.model, dtype=args.dtype, num_threads=threads, block_size=128)
    runner = ModelRunner.load(cfg)
    runner.allocate_kv_cache(8)
    torch.set_num_threads(threads)
    prompt = list(range(1000, 1032))
    wbytes = runner.weight_bytes()

    bw = copy_bandwidth()
    ours_runs, loop_runs = [], []
    for _ in range(args.runs):
        ts = ours_decode(runner, prompt, args.steps)
        ours_runs.append(1.0 / statistics.median(ts[2:]))
        if args.compare_decode_stack:
            runner.model.allow_decode_stack = False
            ts = ours_decode(runner, prompt, args.steps)
            loop_runs.append(1.0 / statistics.median(ts[2:]))
            runner.model.allow_decode_stack = True
    ours = statistics.median(ours_runs)
    decode_stack = runner.model.decode_stack(runner.kv_caches) is not None
    ceiling = matmul_ceiling(runner)
    act_dtype, op_table = str(runner.model.act_dtype).replace("torch.", ""), runner.ops.name
    bw2 = copy_bandwidth()
    bw = statistics.median([bw, bw2])
    bound = bw / wbytes

    hf = None
    hf_runs = []
    if not args.skip_hf:
        from transformers import AutoModelForCausalLM
        del runner
        model = AutoModelForCausalLM.from_pretrained(_imported(cfg), dtype=getattr(torch, args.dtype)).eval()
        torch.set_num_threads(threads)
        for _ in range(max(1, args.runs // 2 + 1)):
            hf_runs.append(hf_decode_tps(model, prompt, args.steps))
        hf = statistics.median(hf_runs)

    res = {
        "model": args.model, "dtype": args.dtype, "threads": threads, "steps": args.steps, "runs": args.runs,
        "clock": "process_time" if args.cpu_time else "wall", "cpu": _cpu_name(), "cpu_fast_bf16": cpu_has_fast_bf16(), "torch": torch.__version__,
        "load_avg_1m": os.getloadavg()[0], "weight_bytes_per_step": wbytes,
        "copy_bandwidth_gbs": round(bw / 1e9, 1), "bound_tok_s": round(bound, 1),
        "matmul_only_tok_s": ceiling, "act_dtype": act_dtype,
        "op_table": op_table, "ours_tok_s": round(ours, 1), "ours_runs": [round(x, 1) for x in ours_runs],
        "decode_stack": decode_stack,
        "python_layer_loop_tok_s": round(statistics.median(loop_runs), 1) if loop_runs else None,
        "python_layer_loop_runs": [round(x, 1) for x in loop_runs],
        "hf_tok_s": None if hf is None else round(hf, 1), "hf_runs": [round(x, 1) for x in hf_runs],
        "ours_vs_bound": round(ours / bound, 2), "ours_vs_hf": None if hf is None else round(ours / hf, 2),
    }
    print(json.dumps(res, indent=1))
    print(f"\n| what | decode tok/s (median) |\n|---|---|\n| ours ({args.dtype}, {threads} threads) | {ours:.1f} |"
          + (f"\n| ours, layers from Python | {statistics.median(loop_runs):.1f} |" if loop_runs else "")
          + (f"\n| transformers generate | {hf:.1f} |" if hf else "")
          + f"\n| bandwidth bound ({wbytes / 1e9:.2f} GB/step at {bw / 1e9:.1f} GB/s) | {bound:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


def _imported(cfg):
    from mindie_like.backend_atb.weights import resolve_model_dir
    return str(resolve_model_dir(cfg.model_path))


def _cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
