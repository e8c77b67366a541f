#!/usr/bin/env python
"""Decode speed of a random Qwen3-MoE model shaped like a scaled-down Qwen3-30B-A3B: our engine vs transformers.

    PYTHONPATH=. python benchmarks/bench_moe.py [--layers 8] [--steps 24] [--dtype float32] [--json out.json]

One process, one run: the model (hidden 1024, 16 query / 4 KV heads of 64, 64 experts of 384, top-8, 8 layers,
the qwen2.5 tokenizer's vocabulary) is built with transformers and saved once. For 1 and 16 streams:
  ours   the engine (EngineCore, paged KV, the fused MoE block) serving the streams; decode tok/s = generated
         tokens after the first / wall time of the steps after every prefill finished;
  hf     `generate` on the batch (same prompt length, no padding), greedy, for each of transformers'
         experts implementations that loads on this machine; decode tok/s from (t(N) - t(1)) / (N - 1) per stream.
Same dtype, same thread count. Numbers only mean something relative to each other within one run.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from mindie_like.backend_atb import ModelRunner  # noqa: E402
from mindie_like.engine.core import EngineCore  # noqa: E402
from mindie_like.engine.types import EngineConfig, SamplingParams  # noqa: E402

SHAPE = dict(hidden_size=1024, num_attention_heads=16, num_key_value_heads=4, head_dim=64, num_experts=64,
             num_experts_per_tok=8, moe_intermediate_size=384, intermediate_size=3072, norm_topk_prob=True,
             initializer_range=0.02)


def build(dest: Path, layers: int, dtype: str) -> Path:
    from tiny_models import build_tiny_model
    if not (dest / "config.json").is_file():
        build_tiny_model(dest, "qwen3_moe", dtype=dtype, num_hidden_layers=layers, **SHAPE)
    return dest


def prompts(n: int, length: int) -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(3, 30000) for _ in range(length)] for _ in range(n)]


def ours(path: Path, streams: int, plen: int, steps: int, dtype: str, threads: int) -> float:
    cfg = EngineConfig(model_path=str(path), dtype=dtype, device="cpu", block_size=16, num_threads=threads,
                       extra={"num_kv_blocks": 64 * streams})
    runner = ModelRunner.load(cfg)
    core = EngineCore(EngineConfig(model_path=str(path), block_size=16, max_batch_size=streams,
                                   extra={"num_kv_blocks": 64 * streams}), runner)
    params = SamplingParams(temperature=0, max_tokens=steps, ignore_eos=True)
    for i, p in enumerate(prompts(streams, plen)):
        core.add_request(core.make_request(f"r{i}", p, params))
    produced, t0 = 0, None
    while core.has_work():
        outs = core.step()
        n = sum(len(o.new_token_ids) for _, o in outs)
        if t0 is None:
            if len(outs) == streams:        # every stream has its first token: decode steps from here
                t0 = time.perf_counter()
            continue
        produced += n
    return produced / (time.perf_counter() - t0)


def hf(path: Path, streams: int, plen: int, steps: int, dtype: str, impl: str) -> float:
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype),
                                             experts_implementation=impl).eval()
    ids = torch.tensor(prompts(streams, plen))
    mask = torch.ones_like(ids)

    def run(n):
        t = time.perf_counter()
        with torch.inference_mode():
            m.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return time.perf_counter() - t
    run(2)
    t1, tn = run(1), run(steps)
    return streams * (steps - 1) / (tn - t1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--dir", default="/tmp/mindie_like_bench_moe")
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    path = build(Path(a.dir) / f"l{a.layers}_{a.dtype}", a.layers, a.dtype)
    res = {"shape": {**SHAPE, "num_hidden_layers": a.layers}, "dtype": a.dtype, "threads": a.threads,
           "steps": a.steps, "prompt": a.prompt, "runs": {}}
    for streams in (1, 16):
        row = {"ours": ours(path, streams, a.prompt, a.steps, a.dtype, a.threads)}
        for impl in ("eager", "batched_mm", "grouped_mm"):
            try:
                row[f"hf_{impl}"] = hf(path, streams, a.prompt, a.steps, a.dtype, impl)
            except Exception as e:  # noqa: BLE001 - an implementation this torch / CPU cannot run
                row[f"hf_{impl}"] = f"unavailable: {type(e).__name__}: {str(e)[:120]}"
        res["runs"][streams] = row
        print(f"{streams:2d} streams: " + ", ".join(f"{k} {v:.1f} tok/s" if isinstance(v, float) else f"{k} {v}"
                                                    for k, v in row.items()), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
