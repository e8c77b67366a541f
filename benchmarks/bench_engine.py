#!/usr/bin/env python
"""Engine benchmark: our AsyncEngine vs transformers (and llama-cpp-python when installed).

    PYTHONPATH=. python benchmarks/bench_engine.py [--model models/qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct.gguf]
        [--threads N] [--quick] [--skip-hf] [--skip-llamacpp] [--json out.json]

In one run, same dtype (the serving dtype unless --dtype: the weights are bfloat16, which the backend runs as
bfloat16 on CPUs with AVX512-BF16/AMX and as float32 otherwise -- on an AVX2-only CPU bfloat16 matmuls are 4-6x
slower than float32 for more than one row), same torch thread count:
1. memory bandwidth, measured with a large tensor copy; the decode bound = bandwidth / weight bytes per step;
2. single stream, 256 output tokens: our decode tok/s vs transformers `generate` and vs the bound;
3. 16 concurrent requests, prompts of 50-1000 tokens, 128 output tokens each: our aggregate output tok/s vs
   transformers `generate` on a left-padded static batch of the same 16, and vs llama-cpp-python on the same GGUF
   (its own quantized weights) running them one after another;
4. time to first token for a 1000-token prompt, ours vs transformers;
5. peak RSS of the process after our engine's runs (before transformers is loaded) and at the end.
Greedy decoding with ignore_eos, so every system generates exactly the asked number of tokens.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mindie_like.engine.async_engine import AsyncEngine  # noqa: E402
from mindie_like.engine.types import EngineConfig, QuantOptions, SamplingParams  # noqa: E402

CLOCK = time.perf_counter      # --cpu-time: time.process_time (with --threads 1: the CPU time actually received,
                               # which discounts waiting for a core on a shared machine)
DEFAULT_MODEL = str(Path(__file__).resolve().parents[1] / "models" / "qwen2.5-coder-0.5b-instruct" / "qwen2.5-coder-0.5b-instruct.gguf")  # bin/fetch_models


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure_bandwidth(mb: int = 512, reps: int = 5) -> float:
    """GB/s of a large copy (bytes read + bytes written), median of `reps`."""
    n = mb * (1 << 20) // 4
    a = torch.ones(n, dtype=torch.float32)
    b = torch.empty_like(a)
    b.copy_(a)
    times = []
    for _ in range(reps):
        t = CLOCK()
        b.copy_(a)
        times.append(CLOCK() - t)
    return 2 * a.numel() * 4 / statistics.median(times) / 1e9


def make_prompts(n: int, lo: int, hi: int, seed: int = 0, vocab_lo: int = 1000, vocab_hi: int = 30000):
    rng = random.Random(seed)
    lens = [lo + (hi - lo) * i // max(1, n - 1) for i in range(n)]
    rng.shuffle(lens)
    return [[rng.randrange(vocab_lo, vocab_hi) for _ in range(k)] for k in lens]


# ---------------------------------------------------------------------------------------------------- ours
async def _one(engine, prompt, n_out, rid):
    params = SamplingParams(temperature=0, max_tokens=n_out, ignore_eos=True)
    times, n = [], 0
    t0 = CLOCK()
    async for out in engine.generate(prompt, params, rid):
        n += len(out.new_token_ids)
        times.append(CLOCK())
    return {"t0": t0, "ttft": times[0] - t0, "times": times, "n": n}


def ours_single(engine, prompt, n_out):
    r = asyncio.run(_one(engine, prompt, n_out, "single"))
    decode = (r["n"] - 1) / (r["times"][-1] - r["times"][0])
    return {"ttft_s": r["ttft"], "decode_tok_s": decode, "tokens": r["n"]}


def ours_concurrent(engine, prompts, n_out):
    async def main():
        t0 = CLOCK()
        res = await asyncio.gather(*(_one(engine, p, n_out, f"c{i}") for i, p in enumerate(prompts)))
        return res, CLOCK() - t0
    res, wall = asyncio.run(main())
    total = sum(r["n"] for r in res)
    return {"wall_s": wall, "output_tokens": total, "tok_s": total / wall,
            "mean_ttft_s": statistics.mean(r["ttft"] for r in res)}


# ---------------------------------------------------------------------------------------------------- transformers
def hf_load(model_dir, dtype):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    return m.eval()


@torch.inference_mode()
def hf_generate(model, batch_ids, n_out, pad_id):
    """Left-padded static batch; returns seconds."""
    maxlen = max(len(p) for p in batch_ids)
    ids = torch.full((len(batch_ids), maxlen), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(batch_ids):
        ids[i, maxlen - len(p):] = torch.tensor(p)
        mask[i, maxlen - len(p):] = 1
    t = CLOCK()
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_out, min_new_tokens=n_out,
                         do_sample=False, pad_token_id=pad_id)
    dt = CLOCK() - t
    assert out.shape[1] - maxlen == n_out
    return dt


# ---------------------------------------------------------------------------------------------------- llama.cpp
def llamacpp_sequential(gguf, prompts, n_out, threads):
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=str(gguf), n_ctx=2048, n_threads=threads, n_batch=512, verbose=False, seed=0)
    total, t0 = 0, CLOCK()
    for p in prompts:
        llm.reset()
        n = 0
        for tok in llm.generate(p, temp=0.0, reset=True):
            n += 1
            if n >= n_out:
                break
        total += n
    wall = CLOCK() - t0
    return {"wall_s": wall, "output_tokens": total, "tok_s": total / wall}


# ---------------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--dtype", default="auto",
                    help="auto: what the daemon serves with (bfloat16 on CPUs with AVX512-BF16/AMX, else float32); "
                         "transformers runs in the same dtype")
    ap.add_argument("--hf-dtype", default=None,
                    help="transformers' dtype (default: ours); float32 is transformers' fastest on CPUs without "
                         "native bf16")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: the cores available)")
    ap.add_argument("--kv-cache-gb", type=float, default=2.0)
    ap.add_argument("--single-tokens", type=int, default=256)
    ap.add_argument("--concurrent", type=int, default=16)
    ap.add_argument("--concurrent-tokens", type=int, default=128)
    ap.add_argument("--prompt-min", type=int, default=50)
    ap.add_argument("--prompt-max", type=int, default=1000)
    ap.add_argument("--ttft-prompt", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-llamacpp", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--quantization", default=None, help="w8a16 / w4a16 / gguf (EngineConfig.quantization)")
    ap.add_argument("--quant-dense", default="auto", help="per-step choice: auto (measured crossover), never, always")
    ap.add_argument("--quant-from-gguf", default="true", help="int weights from the GGUF's own blocks (true) or "
                    "quantized from the bf16 import (false: faster to load)")
    ap.add_argument("--cpu-time", action="store_true", help="measure process CPU time instead of wall time "
                    "(meaningful with --threads 1 on a busy shared machine)")
    a = ap.parse_args()
    if a.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    if a.quick:
        a.single_tokens, a.concurrent, a.concurrent_tokens, a.ttft_prompt, a.prompt_max = 32, 4, 16, 200, 200

    threads = a.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    res: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                             "threads": threads, "load_avg_start": os.getloadavg()},
                 "model": a.model, "dtype": a.dtype, "args": vars(a)}
    print(f"threads={threads} load={os.getloadavg()}", flush=True)
    res["bandwidth_GBps"] = measure_bandwidth()
    print(f"copy bandwidth: {res['bandwidth_GBps']:.1f} GB/s", flush=True)

    # ---- ours
    t = CLOCK()
    cfg = EngineConfig(model_path=a.model, dtype=a.dtype, device="cpu", num_threads=threads,
                       kv_cache_gb=a.kv_cache_gb, max_seq_len=4096, max_input_len=4000, max_iter_times=4096,
                       max_batch_size=64, max_prefill_tokens=2048, chunked_prefill=True,
                       quant=QuantOptions(scheme=a.quantization or None, dense=a.quant_dense,
                                          from_gguf=a.quant_from_gguf.lower() in ("1", "true", "yes")))
    engine = AsyncEngine.from_config(cfg)
    res["ours_load_s"] = CLOCK() - t
    runner = engine.runner
    res["dtype"] = str(runner.dtype).replace("torch.", "")
    model_dir = Path(runner.tokenizer_path)
    wbytes = runner.weight_bytes() if hasattr(runner, "weight_bytes") else None
    res["weight_bytes"] = wbytes
    res["bound_tok_s"] = res["bandwidth_GBps"] * 1e9 / wbytes if wbytes else None
    print(f"engine loaded in {res['ours_load_s']:.1f} s ({getattr(runner, 'path', '?')} path, {runner.dtype}); "
          f"weights {wbytes / 1e6 if wbytes else 0:.0f} MB/step; bound {res['bound_tok_s'] or 0:.1f} tok/s",
          flush=True)

    single_prompt = make_prompts(1, 20, 20, seed=1)[0]
    ours_single(engine, single_prompt, 8)                                  # warm-up
    res["ours_single"] = ours_single(engine, single_prompt, a.single_tokens)
    print("ours single:", res["ours_single"], flush=True)
    prompts = make_prompts(a.concurrent, a.prompt_min, a.prompt_max, seed=2)
    res["ours_concurrent"] = ours_concurrent(engine, prompts, a.concurrent_tokens)
    print("ours concurrent:", res["ours_concurrent"], flush=True)
    ttft_prompt = make_prompts(1, a.ttft_prompt, a.ttft_prompt, seed=3)[0]
    res["ours_ttft"] = ours_single(engine, ttft_prompt, 2)["ttft_s"]
    print(f"ours TTFT({a.ttft_prompt}): {res['ours_ttft']:.2f} s", flush=True)
    res["ours_stats"] = engine.stats().__dict__
    res["peak_rss_mb_ours"] = rss_mb()
    engine.shutdown()
    del engine, runner
    gc.collect()

    # ---- transformers
    if not a.skip_hf:
        res["hf_dtype"] = a.hf_dtype or res["dtype"]
        m = hf_load(model_dir, getattr(torch, res["hf_dtype"]))
        pad = m.config.pad_token_id if m.config.pad_token_id is not None else m.config.eos_token_id
        pad = pad[0] if isinstance(pad, list) else pad
        hf_generate(m, [single_prompt], 8, pad)                            # warm-up
        ttft1 = hf_generate(m, [single_prompt], 1, pad)
        dt = hf_generate(m, [single_prompt], a.single_tokens, pad)
        res["hf_single"] = {"ttft_s": ttft1, "decode_tok_s": (a.single_tokens - 1) / (dt - ttft1)}
        print("hf single:", res["hf_single"], flush=True)
        dt = hf_generate(m, prompts, a.concurrent_tokens, pad)
        res["hf_static_batch"] = {"wall_s": dt, "tok_s": a.concurrent * a.concurrent_tokens / dt}
        print("hf static batch:", res["hf_static_batch"], flush=True)
        res["hf_ttft"] = hf_generate(m, [ttft_prompt], 1, pad)
        print(f"hf TTFT({a.ttft_prompt}): {res['hf_ttft']:.2f} s", flush=True)
        del m
        gc.collect()

    # ---- llama.cpp
    if not a.skip_llamacpp:
        gguf = Path(a.model)
        if gguf.suffix == ".gguf":
            r = llamacpp_sequential(gguf, prompts, a.concurrent_tokens, threads)
            res["llamacpp_sequential"] = r if r is not None else "llama-cpp-python not installed"
            print("llama.cpp sequential:", res["llamacpp_sequential"], flush=True)

    res["peak_rss_mb_end"] = rss_mb()
    res["machine"]["load_avg_end"] = os.getloadavg()
    # ---- summary
    s = res
    lines = [f"single stream decode ({a.single_tokens} tokens, {res['dtype']}, {threads} threads): ours {s['ours_single']['decode_tok_s']:.1f} tok/s"]
    if "hf_single" in s:
        lines[-1] += f", transformers {s['hf_single']['decode_tok_s']:.1f} tok/s " \
                     f"({s['ours_single']['decode_tok_s'] / s['hf_single']['decode_tok_s']:.2f}x)"
    if s.get("bound_tok_s"):
        lines[-1] += f", bound {s['bound_tok_s']:.1f} tok/s " \
                     f"({100 * s['ours_single']['decode_tok_s'] / s['bound_tok_s']:.0f}%)"
    lines.append(f"{a.concurrent} concurrent ({a.prompt_min}-{a.prompt_max} prompt, {a.concurrent_tokens} output tokens): ours {s['ours_concurrent']['tok_s']:.1f} tok/s")
    if "hf_static_batch" in s:
        lines[-1] += f", transformers static batch {s['hf_static_batch']['tok_s']:.1f} tok/s " \
                     f"({s['ours_concurrent']['tok_s'] / s['hf_static_batch']['tok_s']:.2f}x)"
    if isinstance(s.get("llamacpp_sequential"), dict):
        lines[-1] += f", llama.cpp sequential {s['llamacpp_sequential']['tok_s']:.1f} tok/s"
    lines.append(f"TTFT {a.ttft_prompt} tokens: ours {s['ours_ttft']:.2f} s"
                 + (f", transformers {s['hf_ttft']:.2f} s" if "hf_ttft" in s else ""))
    lines.append(f"peak RSS: {s['peak_rss_mb_ours']:.0f} MB after our runs, {s['peak_rss_mb_end']:.0f} MB at the end")
    print("\n".join(lines))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
