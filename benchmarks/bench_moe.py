#!/usr/bin/env python
"""MoE decode speed: our engine against transformers' generate on two random models, in one process run.

    PYTHONPATH=. python benchmarks/bench_moe.py [--models qwen3_moe,deepseek_v3] [--layers 8] [--steps 8]
        [--prompt 8] [--dtype bfloat16] [--json out.json]

Models (random weights, built with transformers and saved once under --dir; vocabulary cut to 32768 so the
lm_head does not dominate):
  qwen3_moe    a scaled-down Qwen3-30B-A3B: hidden 1024, 16 query / 4 KV heads of 64, 64 experts of 384, top-8
  deepseek_v3  DeepSeek-V3-shaped: hidden 1024, 16 heads, MLA (q_lora_rank 384, kv_lora_rank 256, rope dim 32,
               nope / v 64), 64 routed experts of 384 + 1 shared, top-6 from 4 of 8 groups (sigmoid scores,
               correction bias), the first layer dense (intermediate 3072), yarn rope
Both 8 layers by default. Sections, each timed and printed as it ends:
  ours ws1     the engine (EngineCore: paged KV, the fused MoE block) serving 1 and 16 streams, 2 threads;
               decode tok/s = tokens generated after every stream had its first / the time they took; at 16
               streams also with the experts run one after the other, each matmul on both threads (the default
               splits the active experts over the threads: TorchOps.moe_expert_threads), interleaved
  ours ws2     the same at worldSize 2 (two processes of 1 thread, gloo, expert-TP), as the tensor-parallel
               tests run it
  hf           transformers `generate` (greedy, same prompts, no padding) for each experts implementation this
               transformers has (eager, batched_mm, grouped_mm), 2 threads; decode tok/s from the time between
               the first and the last generated token (a logits processor stamps each step)
and the KV-cache bytes per token (ours, per layer summed) against full K/V. The ratio printed at the end is ours at
16 streams over transformers' fastest implementation at 16 streams. OpenMP's spin is the daemon's (mindie_like/cpu_threads.py),
for both engines. Numbers only mean something relative to each other within one
run, and on a machine no other job is using.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mindie_like.cpu_threads import set_openmp_defaults  # noqa: E402

set_openmp_defaults(os.environ)         # before torch loads libgomp

import torch  # noqa: E402

from mindie_like.backend_atb import ModelRunner  # noqa: E402
from mindie_like.engine.core import EngineCore  # noqa: E402
from mindie_like.engine.types import EngineConfig, SamplingParams  # noqa: E402

VOCAB = 32768
SHAPES = {
    "qwen3_moe": dict(hidden_size=1024, num_attention_heads=16, num_key_value_heads=4, head_dim=64, num_experts=64,
                      num_experts_per_tok=8, moe_intermediate_size=384, intermediate_size=3072,
                      norm_topk_prob=True),
    "deepseek_v3": dict(hidden_size=1024, num_attention_heads=16, num_key_value_heads=16, q_lora_rank=384,
                        kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
                        n_routed_experts=64, n_shared_experts=1, num_experts_per_tok=6, moe_intermediate_size=384,
                        intermediate_size=3072, first_k_dense_replace=1, n_group=8, topk_group=4,
                        routed_scaling_factor=2.5, norm_topk_prob=True),
}
HF_IMPLS = ("eager", "batched_mm", "grouped_mm")
STREAMS = (1, 16)


def build(dest: Path, family: str, layers: int, dtype: str, shapes: Optional[dict] = None) -> Path:
    """The random model of `family` (shapes: SHAPES unless given) saved once under `dest`."""
    from tests.support.tiny_models import build_tiny_model
    if not (dest / "config.json").is_file():
        build_tiny_model(dest, family, dtype=dtype, num_hidden_layers=layers, vocab_size=VOCAB,
                         initializer_range=0.02, **(shapes or SHAPES)[family])
    return dest


def prompts(n: int, length: int) -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(3, VOCAB) for _ in range(length)] for _ in range(n)]


def engine_config(path: Path, dtype: str, world: int, threads: int) -> EngineConfig:
    return EngineConfig(model_path=str(path), dtype=dtype, device="cpu", block_size=16, num_threads=threads,
                        world_size=world, device_ids=list(range(world)), num_kv_blocks=8 * max(STREAMS),
                        max_batch_size=max(STREAMS))


def decode_rate(runner, cfg: EngineConfig, streams: int, plen: int, steps: int) -> float:
    core = EngineCore(cfg, runner)
    params = SamplingParams(temperature=0, max_tokens=steps, ignore_eos=True)
    for i, p in enumerate(prompts(streams, plen)):
        core.add_request(core.make_request(f"r{i}", p, params))
    produced, t0 = 0, None
    while core.has_work():
        outs = core.step()
        if t0 is None:
            if len(outs) == streams:        # every stream has its first token: decode steps from here
                t0 = time.perf_counter()
            continue
        produced += sum(len(o.new_token_ids) for _, o in outs)
    return produced / (time.perf_counter() - t0)


def ours(path: Path, dtype: str, world: int, threads: int, plen: int, steps: int) -> dict:
    cfg = engine_config(path, dtype, world, threads)
    runner = ModelRunner.load(cfg)
    try:
        decode_rate(runner, cfg, 1, plen, 2)                 # warm-up (first-call costs)
        row = {f"{s} streams": decode_rate(runner, cfg, s, plen, steps) for s in STREAMS}
        ops = getattr(runner, "ops", None)
        if world == 1 and hasattr(ops, "moe_expert_threads"):
            # the default (active experts split over the threads, ops/torch_moe.py) interleaved with every
            # expert matmul on all threads one after the other: best of 2 each
            s = max(STREAMS)
            default = ops.moe_expert_threads
            on, off = [row[f"{s} streams"]], []
            for _ in range(2):
                ops.moe_expert_threads = False
                off.append(decode_rate(runner, cfg, s, plen, steps))
                ops.moe_expert_threads = True
                on.append(decode_rate(runner, cfg, s, plen, steps))
            ops.moe_expert_threads = default
            row[f"{s} streams"] = max(on[1:])
            row[f"{s} streams, experts one after the other"] = max(off)
        if world == 1:
            row["kv"] = kv_bytes(runner)
    finally:
        close = getattr(runner, "close", None)
        if close is not None:
            close()
    return row


def kv_bytes(runner) -> dict:
    """KV-cache bytes per token (all layers) as held, and what full per-head K/V would take."""
    cfg = runner.hf_config
    el = torch.tensor([], dtype=runner.kv_dtype).element_size()
    held = runner.kv_cache_bytes_per_block() // runner.block_size
    layers = cfg.num_hidden_layers
    if getattr(cfg, "kv_lora_rank", None):
        full = layers * cfg.num_attention_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim) * el
        what = f"MLA latent {cfg.kv_lora_rank} + rope key {cfg.qk_rope_head_dim} per layer"
    else:
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        full = layers * 2 * cfg.num_attention_heads * hd * el
        what = f"GQA: {cfg.num_key_value_heads} of {cfg.num_attention_heads} K/V heads"
    return {"held": held, "full": full, "what": what}


def hf(path: Path, dtype: str, plen: int, steps: int, steps_16: int) -> dict:
    from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

    class StepClock(LogitsProcessor):
        def __init__(self):
            self.stamps = []

        def __call__(self, input_ids, scores):
            self.stamps.append(time.perf_counter())
            return scores

    m = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype)).eval()

    def rate(streams: int, n: int) -> float:
        ids = torch.tensor(prompts(streams, plen))
        clock = StepClock()
        with torch.inference_mode():
            m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                       do_sample=False, logits_processor=LogitsProcessorList([clock]))
        return streams * (len(clock.stamps) - 1) / (clock.stamps[-1] - clock.stamps[0])

    row = {}
    for impl in HF_IMPLS:
        try:
            m.set_experts_implementation(impl)
            rate(1, 3)                                            # warm-up
            row[impl] = {f"{s} streams": rate(s, steps if s == 1 else steps_16) for s in STREAMS}
        except Exception as e:  # noqa: BLE001 - an implementation this torch / CPU / model cannot run
            row[impl] = f"unavailable: {type(e).__name__}: {str(e)[:120]}"
    return row


def fmt(row: dict) -> str:
    return ", ".join(f"{k} {v:.2f} tok/s" for k, v in row.items() if isinstance(v, float))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="qwen3_moe,deepseek_v3")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8, help="decode steps per stream")
    ap.add_argument("--prompt", type=int, default=8, help="prompt tokens per stream")
    ap.add_argument("--hf-steps", type=int, default=4,
                    help="transformers' decode steps at 16 streams (batched_mm gathers every pair's expert weights "
                         "and is slow there)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--no-ws2", action="store_true")
    ap.add_argument("--dir", default="/tmp/mindie_like_bench_moe")
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t_all = time.perf_counter()
    res = {"dtype": a.dtype, "threads": a.threads, "steps": a.steps, "hf_steps_16": a.hf_steps, "prompt": a.prompt,
           "models": {}}
    for family in a.models.split(","):
        out = res["models"][family] = {"shape": {**SHAPES[family], "num_hidden_layers": a.layers,
                                                  "vocab_size": VOCAB}, "seconds": {}}

        def section(name, fn):
            t = time.perf_counter()
            out[name] = fn()
            out["seconds"][name] = round(time.perf_counter() - t, 1)
            return out[name]

        path = section("build", lambda: str(build(Path(a.dir) / f"{family}_l{a.layers}_{a.dtype}", family,
                                                   a.layers, a.dtype)))
        path = Path(path)
        r1 = section("ours_ws1", lambda: ours(path, a.dtype, 1, a.threads, a.prompt, a.steps))
        kv = r1["kv"]
        print(f"[{family}] ours worldSize 1: {fmt(r1)} ({out['seconds']['ours_ws1']} s)", flush=True)
        print(f"[{family}] KV cache per token: {kv['held']} bytes ({kv['what']}) vs full K/V {kv['full']} bytes "
              f"({kv['full'] / kv['held']:.1f}x)", flush=True)
        if not a.no_ws2:
            r2 = section("ours_ws2", lambda: ours(path, a.dtype, 2, 1, a.prompt, a.steps))
            print(f"[{family}] ours worldSize 2 (gloo, 1 thread per rank): {fmt(r2)} "
                  f"({out['seconds']['ours_ws2']} s)", flush=True)
        if not a.no_hf:
            rh = section("hf", lambda: hf(path, a.dtype, a.prompt, a.steps, a.hf_steps))
            for impl, row in rh.items():
                print(f"[{family}] transformers {impl}: {fmt(row) if isinstance(row, dict) else row}", flush=True)
            ok = {impl: row[f"{max(STREAMS)} streams"] for impl, row in rh.items() if isinstance(row, dict)}
            if ok:
                best = max(ok, key=ok.get)
                ratio = r1[f"{max(STREAMS)} streams"] / ok[best]
                out["ratio_16_vs_fastest_hf"] = {"impl": best, "ratio": round(ratio, 2)}
                print(f"[{family}] at {max(STREAMS)} streams: ours / transformers {best} (its fastest) = "
                      f"{ratio:.2f}x ({out['seconds']['hf']} s)", flush=True)
                for k, v in r1.items():
                    if k.startswith(f"{max(STREAMS)} streams, experts"):
                        out["ratio_16_vs_fastest_hf"]["ratio_experts_one_after_the_other"] = round(v / ok[best], 2)
                        print(f"[{family}]   with {k.split(', ', 1)[1]}: {v / ok[best]:.2f}x", flush=True)
    res["seconds_total"] = round(time.perf_counter() - t_all, 1)
    print(f"total {res['seconds_total']} s", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
