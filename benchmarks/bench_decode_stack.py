#!/usr/bin/env python
"""The decode step with the C++ decode stack against the Python layer loop, per architecture, at batch 1 and 16.

    PYTHONPATH=. python benchmarks/bench_decode_stack.py [--models glm4,glm,qwen3_moe,qwen2_moe,deepseek_v3] [--layers 4]
        [--steps 8] [--rounds 3] [--dtype bfloat16] [--threads 2] [--json out.json]

Random models built with transformers once under --dir (vocabulary cut to 32768 so the lm_head does not dominate):
  glm4 / glm   hidden 1024, 16 query / 4 KV heads of 64, half the head rotary (glm4 and glm: interleaved pairs),
               intermediate 3072 (glm4: the norms on the attention and MLP outputs)
  qwen3_moe    benchmarks/bench_moe.py's shape: 64 experts of 384, top-8, norm_topk_prob
  qwen2_moe    the same experts (top-8, no renormalization) + a shared expert of 1536 with its sigmoid gate
  deepseek_v3  bench_moe.py's shape: MLA (q LoRA 384, latent 256, rope 32), 64 experts of 384 + 1 shared, top-6
               of 4 of 8 groups, the first layer dense
Per model and batch: a prefill of 16-token prompts, then --rounds rounds, each --steps decode steps with the stack,
then --steps with the layer loop (interleaved, so load on the machine hits both alike); the median step time of
each. The whole step is timed (embedding, layers, final norm, lm_head, sampling's logits out), through the runner's
`execute`. MoE models also at batch 16 with the experts not split over the threads (TorchOps.moe_expert_threads
off; on by default: a thread pool in the layer loop, at::parallel_for in the stack). The 1-minute load average is printed with each model (the numbers mean little on a busy machine).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# bench_moe sets the daemon's OpenMP spin before torch loads; its shapes and model builder are shared
from benchmarks.bench_moe import SHAPES as MOE_SHAPES, VOCAB, build  # noqa: E402

import torch  # noqa: E402

from mindie_like.backend_atb import ModelRunner  # noqa: E402
from mindie_like.engine.types import EngineConfig  # noqa: E402
from tests.support.driver import Driver  # noqa: E402

ATTN = dict(hidden_size=1024, num_attention_heads=16, num_key_value_heads=4, head_dim=64)
SHAPES = {
    "glm4": dict(ATTN, intermediate_size=3072, partial_rotary_factor=0.5),
    "glm": dict(ATTN, intermediate_size=3072, partial_rotary_factor=0.5),
    "qwen3_moe": MOE_SHAPES["qwen3_moe"],
    "qwen2_moe": dict(ATTN, num_experts=64, num_experts_per_tok=8, moe_intermediate_size=384,
                      intermediate_size=3072, shared_expert_intermediate_size=1536, norm_topk_prob=False),
    "deepseek_v3": MOE_SHAPES["deepseek_v3"],
}
BATCHES = (1, 16)


def step_times(runner, batch: int, steps: int, rounds: int) -> dict:
    d = Driver(runner, num_blocks=batch * 8 + 2)
    g = torch.Generator().manual_seed(0)
    ids = [f"s{i}" for i in range(batch)]
    out = d.step([(sid, torch.randint(3, VOCAB, (16,), generator=g).tolist()) for sid in ids])
    times = {True: [], False: []}
    model = runner.model
    for _ in range(rounds):
        for on in (True, False):
            model.allow_decode_stack = on
            for _ in range(steps):
                work = [(sid, [int(r.argmax())]) for sid, r in zip(ids, out)]
                t = time.perf_counter()
                out = d.step(work)
                times[on].append(time.perf_counter() - t)
    model.allow_decode_stack = True
    for sid in ids:
        d.release(sid)
    stack_ms, loop_ms = (1e3 * statistics.median(times[k][1:]) for k in (True, False))
    return {"stack_ms": round(stack_ms, 2), "loop_ms": round(loop_ms, 2), "speedup": round(loop_ms / stack_ms, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="glm4,glm,qwen3_moe,qwen2_moe,deepseek_v3")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", default="/tmp/mindie_like_bench_decode_stack")
    ap.add_argument("--json")
    a = ap.parse_args()
    os.environ.setdefault("MINDIE_LIKE_NO_PROGRESS", "1")
    torch.set_num_threads(a.threads)
    res = {"dtype": a.dtype, "threads": a.threads, "layers": a.layers, "models": {}}
    for family in a.models.split(","):
        path = build(Path(a.dir) / f"{family}-{a.layers}-{a.dtype}", family, a.layers, a.dtype, SHAPES)
        cfg = EngineConfig(model_path=str(path), dtype=a.dtype, device="cpu", block_size=16, num_threads=a.threads,
                           max_batch_size=max(BATCHES))
        runner = ModelRunner.load(cfg)
        torch.set_num_threads(a.threads)
        row = {"load_avg_1m_before": os.getloadavg()[0], "op_table": runner.ops.name,
               "act_dtype": str(runner.model.act_dtype).replace("torch.", "")}
        for b in BATCHES:
            row[f"batch {b}"] = step_times(runner, b, a.steps, a.rounds)
        if hasattr(runner.model.layers[-1].mlp, "experts") and hasattr(runner.ops, "moe_expert_threads"):
            runner.ops.moe_expert_threads = False       # experts one after the other, each matmul on every thread
            row[f"batch {max(BATCHES)}, experts not split"] = step_times(runner, max(BATCHES), a.steps, a.rounds)
            runner.ops.moe_expert_threads = True
        row["stack_used"] = runner.model.decode_stack(runner.kv_caches) is not None
        row["load_avg_1m_after"] = os.getloadavg()[0]
        res["models"][family] = row
        print(family, json.dumps(row), flush=True)
        del runner
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
