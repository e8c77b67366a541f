#!/usr/bin/env python
"""Decode step time of the model runner at 1 and 16 streams, and a prompt's prefill, with the GGUF's block weights
run by each block-kernel mode in turn (interleaved in one process, so every mode sees the same neighbours).

    PYTHONPATH=. python benchmarks/bench_block_decode.py [--model PATH.gguf] [--streams 1,16] [--steps 16]
        [--runs 3] [--prefill 256] [--threads 2] [--modes avx512vnni/int8,avx512/float]

A mode is ISA/activations (`BlockInt8Weight.use_kernel`); `default` keeps what the loader chose (the only mode a
tree without `use_kernel` has). Decode tok/s = streams / median step time (after a 32-token prefill per stream);
prefill tok/s = prompt tokens / time of one prefill call. Medians over --runs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mindie_like.backend_atb import ForwardBatch, ModelRunner  # noqa: E402
from mindie_like.engine.types import EngineConfig  # noqa: E402

DEFAULT_MODEL = str(Path(__file__).resolve().parents[1] / "models" / "qwen2.5-coder-0.5b-instruct" /
                    "qwen2.5-coder-0.5b-instruct.gguf")


def batch(seqs, bs):
    """seqs: [(tokens, start, blocks)] -> one ForwardBatch."""
    ids, pos, slots, qlens, clens, tables, last = [], [], [], [], [], [], []
    width = max(len(b) for _, _, b in seqs)
    for tokens, start, blocks in seqs:
        p = list(range(start, start + len(tokens)))
        ids += tokens
        pos += p
        slots += [blocks[i // bs] * bs + i % bs for i in p]
        qlens.append(len(tokens))
        clens.append(start + len(tokens))
        tables.append(blocks + [0] * (width - len(blocks)))
        last.append(len(ids) - 1)
    return ForwardBatch(seq_ids=[f"s{i}" for i in range(len(seqs))], input_ids=torch.tensor(ids),
                        positions=torch.tensor(pos), query_lens=qlens, context_lens=clens,
                        block_tables=torch.tensor(tables, dtype=torch.int32), slot_mapping=torch.tensor(slots),
                        logits_indices=torch.tensor(last))


def decode_tps(runner, streams, steps, prompt_len=32):
    bs = runner.block_size
    per = (prompt_len + steps + bs) // bs + 1
    blocks = [list(range(1 + s * per, 1 + (s + 1) * per)) for s in range(streams)]
    prompts = [list(range(1000 + s, 1000 + s + prompt_len)) for s in range(streams)]
    logits = runner.execute(batch([(p, 0, b) for p, b in zip(prompts, blocks)], bs))
    toks = [int(t) for t in logits.argmax(-1)]
    ts = []
    for i in range(steps):
        b = batch([([t], prompt_len + i, bl) for t, bl in zip(toks, blocks)], bs)
        t0 = time.perf_counter()
        logits = runner.execute(b)
        ts.append(time.perf_counter() - t0)
        toks = [int(t) for t in logits.argmax(-1)]
    return streams / statistics.median(ts[1:])


def prefill_tps(runner, n):
    bs = runner.block_size
    blocks = list(range(1, 1 + n // bs + 1))
    b = batch([(list(range(2000, 2000 + n)), 0, blocks)], bs)
    t0 = time.perf_counter()
    runner.execute(b)
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--streams", default="1,16")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prefill", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", default="default")
    ap.add_argument("--keep-dense", action="store_true",
                    help="keep the loader's dense copies (the per-step policy may then run large batches in bf16); "
                         "default: dropped, so every matmul runs the mode's kernel")
    a = ap.parse_args()
    os.environ.setdefault("MINDIE_LIKE_NO_PROGRESS", "1")
    t = time.time()
    runner = ModelRunner.load(EngineConfig(model_path=a.model, num_threads=a.threads, block_size=16))
    runner.allocate_kv_cache(512)
    torch.set_num_threads(a.threads)
    ws = [lin.weight for lin in runner.model.linears()] + [runner.model.lm_head]
    blockw = [w for w in ws if hasattr(w, "use_kernel")]
    pol = getattr(runner, "quant_policy", None)
    print(f"policy: {pol.describe() if pol is not None else None}; dense copies "
          f"{'kept' if a.keep_dense else 'dropped'}", flush=True)
    if not a.keep_dense:
        for w in ws:
            if hasattr(w, "drop_dense"):
                w.drop_dense()
    print(f"loaded in {time.time() - t:.0f} s; {len(blockw)} of {len(ws)} weights switchable; kernels: "
          f"{sorted({getattr(w, 'kernel', type(w).__name__) for w in ws})}", flush=True)
    modes = a.modes.split(",")
    streams = [int(s) for s in a.streams.split(",")]
    res = {m: {k: [] for k in [f"decode {s}" for s in streams] + ["prefill"]} for m in modes}
    for _ in range(a.runs):
        for m in modes:
            if m != "default":
                isa, act = m.split("/")
                for w in blockw:
                    w.use_kernel(isa, act)
            with torch.inference_mode():
                for s in streams:
                    res[m][f"decode {s}"].append(decode_tps(runner, s, a.steps))
                if a.prefill:
                    res[m]["prefill"].append(prefill_tps(runner, a.prefill))
    keys = list(next(iter(res.values())))
    print(f"\n| mode ({a.threads} threads) | " + " | ".join(f"{k} tok/s" for k in keys) + " |")
    print("|---|" + "---|" * len(keys))
    for m in modes:
        print(f"| {m} | " + " | ".join(f"{statistics.median(res[m][k]):.1f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
