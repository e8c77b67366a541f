#!/usr/bin/env python
"""One stream through the daemon: inter-token latency (ITL) against the runner's own decode step time, same run.

    PYTHONPATH=. python benchmarks/bench_itl.py [--model models/smollm2-135m-instruct/smollm2-135m-instruct.gguf]
        [--threads 2] [--requests 6] [--max-tokens 64] [--variants libgomp,default,spin0]
(--model: a .gguf file or a model folder)

In one process, one after the other (never two at once): the runner's decode step at batch 1 (in-process, the
daemon's dtype and thread count, a prompt as long as the chat prompt), then for each OpenMP variant a daemon
(mutual TLS, serve_bench's set-up) serving `--requests` streaming chat requests one at a time (greedy,
`ignore_eos`), then the runner again (so the runner's figure brackets the daemon's). Variants set the daemon's
environment before it starts:
    default   what the daemon does by itself (mindie_like/cpu_threads.py: GOMP_SPINCOUNT=30000)
    libgomp   GOMP_SPINCOUNT=300000, libgomp's own default spelled out: workers spin a while, then sleep
    active    OMP_WAIT_POLICY=active (workers spin between parallel regions)
    passive   OMP_WAIT_POLICY=passive (workers sleep at once)
    spin0     GOMP_SPINCOUNT=0
    spin10k, spin30k, spin100k, spin3m, spin30m   GOMP_SPINCOUNT 10,000 / 30,000 / 100,000 / 3,000,000 / 30,000,000
ITL: the gaps between streamed chunks (loadgen), p50; step: the runner's median decode step. The ratio is the
daemon's overhead per token. The daemon's own decode step in the same run comes from its metrics endpoint
(engine_step_seconds{phase="decode"}, scraped before and after the measured requests): its p50 (interpolated in
the histogram's buckets) and mean, and ITL p50 / daemon step p50 (the goal at one stream: within 10%). Prints a markdown table with the load average; a shared machine makes these noisy.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_runner import ours_decode  # noqa: E402
from benchmarks.loadgen import run_load  # noqa: E402
from benchmarks.serve_bench import OurDaemon  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "smollm2-135m-instruct" / "smollm2-135m-instruct.gguf"
VARIANTS = {
    "default": {},
    "libgomp": {"GOMP_SPINCOUNT": "300000"},
    "active": {"OMP_WAIT_POLICY": "active"},
    "passive": {"OMP_WAIT_POLICY": "passive"},
    "spin0": {"GOMP_SPINCOUNT": "0"},
    "spin10k": {"GOMP_SPINCOUNT": "10000"},
    "spin30k": {"GOMP_SPINCOUNT": "30000"},
    "spin100k": {"GOMP_SPINCOUNT": "100000"},
    "spin3m": {"GOMP_SPINCOUNT": "3000000"},
    "spin30m": {"GOMP_SPINCOUNT": "30000000"},
}
OMP_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_PROC_BIND", "OMP_PLACES")


def runner_step_ms(model: Path, threads: int, steps: int, prompt_len: int, runs: int = 3) -> float:
    from mindie_like.backend_atb import ModelRunner
    from mindie_like.engine.types import EngineConfig
    cfg = EngineConfig(model_path=str(model), dtype="auto", num_threads=threads, block_size=128)
    runner = ModelRunner.load(cfg)
    runner.allocate_kv_cache(8)
    torch.set_num_threads(threads)
    prompt = list(range(1000, 1000 + prompt_len))
    meds = [statistics.median(ours_decode(runner, prompt, steps)[2:]) for _ in range(runs)]
    return 1000 * statistics.median(meds)


def daemon_itl(model: Path, threads: int, env: dict, args) -> dict:
    saved = {k: os.environ.get(k) for k in OMP_KEYS}
    for k in OMP_KEYS:
        os.environ.pop(k, None)
    os.environ.update(env)
    try:
        with tempfile.TemporaryDirectory() as home:
            d = OurDaemon(model, threads, Path(home), {})
            if model.is_dir():          # a model folder: its files, not the folder, in the daemon's model dir
                link = Path(home) / "model" / model.name
                link.unlink()
                for f in model.iterdir():
                    os.symlink(f, link.parent / f.name)
            d.start()
            try:
                common = dict(max_tokens=args.max_tokens, temperature=0.0, stream_fraction=1.0, tools_fraction=0.0,
                              ignore_eos=True, request_timeout=300)
                asyncio.run(run_load(d.load_config(concurrency=1, requests=1, duration=600, **common)))
                before = decode_step_histogram(d.scrape_metrics())
                res = asyncio.run(run_load(d.load_config(concurrency=1, requests=args.requests, duration=600,
                                                         **common)))
                step = histogram_delta(decode_step_histogram(d.scrape_metrics()), before)
            finally:
                d.stop()
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v
    s = res.summary()
    prompts = [r.prompt_tokens for r in res.succeeded if r.prompt_tokens]
    return {"itl_p50_ms": s["itl_ms"]["p50"], "itl_p99_ms": s["itl_ms"]["p99"], "tpot_p50_ms": s["tpot_ms"]["p50"],
            "ttft_p50_ms": s["ttft_ms"]["p50"], "succeeded": s["succeeded"], "errors": s["errors"],
            "prompt_tokens": statistics.median(prompts) if prompts else None,
            "daemon_step_p50_ms": _ms(histogram_quantile(step, 0.5)), "daemon_step_mean_ms":
                _ms(step["sum"] / step["count"] if step["count"] else None), "daemon_decode_steps": step["count"]}


def _ms(seconds):
    return None if seconds is None else round(1000 * seconds, 2)


def decode_step_histogram(text: str) -> dict:
    """{"buckets": [(le, cumulative count)], "sum", "count"} of engine_step_seconds{phase="decode"}."""
    from prometheus_client.parser import text_string_to_metric_families
    out = {"buckets": [], "sum": 0.0, "count": 0.0}
    for fam in text_string_to_metric_families(text):
        if fam.name != "engine_step_seconds":
            continue
        for s in fam.samples:
            if s.labels.get("phase") != "decode":
                continue
            if s.name.endswith("_bucket"):
                out["buckets"].append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_sum"):
                out["sum"] = s.value
            elif s.name.endswith("_count"):
                out["count"] = s.value
    out["buckets"].sort()
    return out


def histogram_delta(after: dict, before: dict) -> dict:
    old = dict(before["buckets"])
    return {"buckets": [(le, c - old.get(le, 0.0)) for le, c in after["buckets"]],
            "sum": after["sum"] - before["sum"], "count": after["count"] - before["count"]}


def histogram_quantile(h: dict, q: float):
    """Prometheus' histogram_quantile: linear within the bucket holding the q-th observation."""
    total = h["count"]
    if not total:
        return None
    rank, lo, below = q * total, 0.0, 0.0
    for le, c in h["buckets"]:
        if c >= rank:
            if le == float("inf"):
                return lo
            return lo + (le - lo) * ((rank - below) / (c - below) if c > below else 0.0)
        lo, below = le, c
    return lo


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--requests", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--variants", default="libgomp,default")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--no-runner", action="store_true", help="skip the in-process runner (the daemon's own step "
                    "from its metrics is still reported)")
    args = ap.parse_args(argv)
    os.environ.setdefault("MINDIE_LIKE_NO_PROGRESS", "1")
    os.environ.setdefault("MINDIE_LIKE_CACHE_DIR", str(REPO / "cache"))     # the daemon's GGUF import, reused
    model = Path(args.model).resolve()
    out = {"model": str(model), "threads": args.threads, "load_avg_start": os.getloadavg(), "daemon": {}}
    # the runner in this process is measured with the default OpenMP settings of this process
    daemon = {}
    for name in args.variants.split(","):
        daemon[name] = daemon_itl(model, args.threads, VARIANTS[name], args)
        print(name, daemon[name], flush=True)
    prompt_len = int(next((v["prompt_tokens"] for v in daemon.values() if v["prompt_tokens"]), 32))
    step_ms = float("nan") if args.no_runner else runner_step_ms(model, args.threads, args.max_tokens, prompt_len)
    out.update(daemon=daemon, runner_step_ms=round(step_ms, 2), load_avg_end=os.getloadavg())
    print(json.dumps(out, indent=1))
    print(f"\nload average {out['load_avg_start'][0]:.1f} -> {out['load_avg_end'][0]:.1f} on {os.cpu_count()} CPUs; "
          f"runner decode step (batch 1, median): {step_ms:.2f} ms\n")
    print("| daemon variant | ITL p50 ms | ITL p99 ms | daemon decode step p50 / mean ms | ITL / daemon step p50 | "
          "ITL / runner step |\n|---|---|---|---|---|---|")
    for name, v in daemon.items():
        ratio = v["itl_p50_ms"] / step_ms if v["itl_p50_ms"] else float("nan")
        own = v["itl_p50_ms"] / v["daemon_step_p50_ms"] if v["itl_p50_ms"] and v["daemon_step_p50_ms"] else float("nan")
        print(f"| {name} | {v['itl_p50_ms']} | {v['itl_p99_ms']} | {v['daemon_step_p50_ms']} / "
              f"{v['daemon_step_mean_ms']} | {own:.2f} | {ratio:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
