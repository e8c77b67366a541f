#!/usr/bin/env python
"""Prefix reuse against cacheBlockSize: requests that share a system prompt + tools, one after the other, through
the engine core and the real runner (in-process, no server).

    PYTHONPATH=. python benchmarks/bench_block_size.py [--model models/smollm2-135m-instruct/smollm2-135m-instruct.gguf]
        [--block-sizes 16,32,64,128] [--requests 8] [--max-tokens 16] [--threads 2] [--rounds 1]

A block size written `16w` reuses whole blocks only (partial-block reuse off); plain `16` reuses the prefix to
the token (the engine's default). `--rounds N` runs the whole list N times, interleaved, and reports each.

For each block size: the runner is loaded with it, one warm-up request fills the prefix cache, then `--requests`
requests (loadgen's prompts, each after the same system message holding the tool schemas as JSON, so the shared
prefix does not depend on the model's chat template) run one at a time. Per block size: prompt tokens served from
the cache vs computed, time to first token (engine core: add -> first sampled token), the median decode step.
Prints a markdown table with the load average; a shared machine makes the times noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.loadgen import PROMPTS, WEATHER_TOOLS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "smollm2-135m-instruct" / "smollm2-135m-instruct.gguf"
SYSTEM = "You are a helpful assistant. You can call these functions:\n" + json.dumps(WEATHER_TOOLS, indent=1)


def prompts(tokenizer, n: int) -> list[list[int]]:
    out = []
    for i in range(n + 1):
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
        out.append(tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)["input_ids"])
    return out


def run_block_size(model: Path, variant: str, threads: int, ps: list[list[int]], max_tokens: int) -> dict:
    from mindie_like.backend_atb import ModelRunner
    from mindie_like.engine.core import EngineCore
    from mindie_like.engine.types import EngineConfig, SamplingParams
    bs = int(variant.rstrip("w"))
    cfg = EngineConfig(model_path=str(model), dtype="auto", num_threads=threads, block_size=bs,
                       num_kv_blocks=4096 // bs * 8, partial_block_reuse=not variant.endswith("w"))
    runner = ModelRunner.load(cfg)
    torch.set_num_threads(threads)
    core = EngineCore(cfg, runner)
    rows = []
    for i, p in enumerate(ps):
        params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        t0 = time.perf_counter()
        core.add_request(core.make_request(f"r{i}", p, params))
        ttft, cached, steps = None, 0, []
        while core.has_work():
            t = time.perf_counter()
            outs = core.step()
            dt = time.perf_counter() - t
            for _, out in outs:
                if ttft is None:
                    ttft = time.perf_counter() - t0
                    cached = out.num_cached_tokens or 0
                else:
                    steps.append(dt)
        if i > 0:                          # the first request only fills the cache
            rows.append({"prompt": len(p), "cached": cached, "ttft_ms": 1000 * ttft,
                         "step_ms": 1000 * statistics.median(steps)})
    return {"block_size": variant, "prompt_tokens": statistics.mean(r["prompt"] for r in rows),
            "cached_tokens": statistics.mean(r["cached"] for r in rows),
            "computed_tokens": statistics.mean(r["prompt"] - r["cached"] for r in rows),
            "ttft_p50_ms": round(statistics.median(r["ttft_ms"] for r in rows), 1),
            "decode_step_p50_ms": round(statistics.median(r["step_ms"] for r in rows), 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--block-sizes", default="16,32,64,128")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    os.environ.setdefault("MINDIE_LIKE_NO_PROGRESS", "1")
    os.environ.setdefault("MINDIE_LIKE_CACHE_DIR", str(REPO / "cache"))     # the daemon's GGUF import, reused
    from transformers import AutoTokenizer
    from mindie_like.backend_atb.gguf_native import tokenizer_dir
    model = Path(args.model).resolve()
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir(model)))
    ps = prompts(tok, args.requests)
    load0 = os.getloadavg()[0]
    res = []
    for _ in range(args.rounds):
        for b in args.block_sizes.split(","):
            res.append(run_block_size(model, b, args.threads, ps, args.max_tokens))
            print(json.dumps(res[-1]), f"load {os.getloadavg()[0]:.1f}", flush=True)
    print(json.dumps(res, indent=1))
    print(f"\nload average {load0:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    print("| cacheBlockSize | prompt tokens | served from cache | computed | TTFT p50 ms | decode step p50 ms |\n"
          "|---|---|---|---|---|---|")
    for r in res:
        print(f"| {r['block_size']} | {r['prompt_tokens']:.0f} | {r['cached_tokens']:.0f} | {r['computed_tokens']:.0f}"
              f" | {r['ttft_p50_ms']} | {r['decode_step_p50_ms']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
