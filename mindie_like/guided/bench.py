"""Measure constrained decoding: llguidance tokenizer build, grammar compile per schema, per-token mask + apply.

    python -m mindie_like.guided.bench [--tokenizer PATH] [--runs N] [--threads T]

Prints medians (and p90) in a markdown table; docs/benchmarks.md records a run. Compiles bypass the cache (a fresh
GuidedDecoding cache per run); per-token numbers come from driving masks with random logits like the engine does.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path
import time

import numpy as np
import torch


def _q(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def _tools(n_props: int = 3):
    return [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"},
                                         "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                                         "days": {"type": "integer", "minimum": 1, "maximum": 14}},
        "required": ["city"]}}}]


def _wide(n: int):
    props = {}
    for i in range(n):
        props[f"f{i}"] = [{"type": "string", "maxLength": 32}, {"type": "integer", "minimum": 0},
                          {"type": "boolean"}, {"type": "array", "items": {"type": "number"}},
                          {"enum": ["a", "b", "c"]}][i % 5]
    return {"type": "object", "properties": props, "required": [f"f{i}" for i in range(0, n, 2)]}


CASES = {
    "1 tool, 3 params (qwen2_5)": ("qwen2_5", lambda: _tools(), "required", None),
    "5 tools x 20 params (qwen2_5)": ("qwen2_5", lambda: [{"type": "function", "function": {
        "name": f"tool_{k}", "parameters": _wide(20)}} for k in range(5)], "required", None),
    "nested $defs (llama3)": ("llama3", lambda: [{"type": "function", "function": {"name": "order", "parameters": {
        "$defs": {"Item": {"type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
                           "required": ["sku", "qty"]}},
        "type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"}}},
        "required": ["items"]}}}], "required", None),
    "string maxLength 10000 (qwen2_5)": ("qwen2_5", lambda: [{"type": "function", "function": {
        "name": "write", "parameters": {"type": "object", "properties": {
            "text": {"type": "string", "maxLength": 10000}}, "required": ["text"]}}}], "required", None),
    "1 tool, per parameter (qwen3_coder)": ("qwen3_coder", lambda: _tools(), "required", None),
    "response_format json_object": ("qwen2_5", lambda: None, "none", {"type": "json_object"}),
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", default=str(Path(__file__).resolve().parents[2] / "tests" / "data" / "tokenizers" / "qwen2.5"))
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--tokens", type=int, default=2000, help="sampled tokens for the per-token numbers")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoTokenizer

    from mindie_like.guided import GuidedDecoding

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    t0 = time.perf_counter()
    g = GuidedDecoding(tok)
    print(f"tokenizer: {args.tokenizer}, vocab {g.vocab_size}; llguidance tokenizer build "
          f"{(time.perf_counter() - t0) * 1000:.0f} ms; torch threads {torch.get_num_threads()}")

    print("\n| grammar | compile median ms | p90 ms |\n|---|---|---|")
    for label, (family, tools, choice, rf) in CASES.items():
        times = []
        for _ in range(args.runs):
            g._cache.clear()
            g._schema_ok.clear()
            plan = g.plan(family, tools(), choice, response_format=rf)
            t = time.perf_counter()
            g.build_mask_sync(plan)
            times.append((time.perf_counter() - t) * 1000)
        print(f"| {label} | {statistics.median(times):.2f} | {_q(times, 0.9):.2f} |")

    # per-token: drive masks with random logits
    plan = g.plan("qwen2_5", [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                         "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                                         "days": {"type": "integer", "minimum": 1, "maximum": 14}},
        "required": ["city", "days"]}}}], "required")
    rng = np.random.default_rng(0)
    mask_us, apply_us, accept_us, allowed = [], [], [], []
    mask, n = g.build_mask_sync(plan), 0
    while n < args.tokens:
        row = torch.from_numpy(rng.random(g.vocab_size + 128, dtype=np.float32))
        w = mask._words
        t = time.perf_counter()
        mask._m.unsafe_compute_mask_ptr(w.ctypes.data, w.nbytes)        # the matcher alone
        mask_us.append((time.perf_counter() - t) * 1e6)
        t = time.perf_counter()
        mask.apply(row)                                                  # what the engine pays (mask + bias + add)
        apply_us.append((time.perf_counter() - t) * 1e6)
        tid = int(torch.argmax(row))
        allowed.append(int(torch.isfinite(row).sum()))
        t = time.perf_counter()
        mask.accept(tid)
        accept_us.append((time.perf_counter() - t) * 1e6)
        n += 1
        if mask.is_finished() or tid in g.eos_token_ids:
            mask = g.build_mask_sync(plan)
    print(f"\nper token over {n} sampled tokens (151k vocab + 128 padding, float32 row):")
    print("| step | median us | p90 us |\n|---|---|---|")
    for label, xs in (("llguidance mask (compute_mask)", mask_us), ("apply() total", apply_us),
                      ("accept()", accept_us)):
        print(f"| {label} | {statistics.median(xs):.0f} | {_q(xs, 0.9):.0f} |")
    print(f"(allowed tokens per step: median {statistics.median(allowed):.0f})")

    # apply() variants on the same bitmask, for the record
    V = g.vocab_size
    words = np.random.default_rng(1).integers(-2**31, 2**31 - 1, size=(V + 31) // 32, dtype=np.int64).astype(np.int32)
    bits = np.unpackbits(words.view(np.uint8), count=V, bitorder="little")
    boolmask = torch.from_numpy(bits).view(torch.bool)
    logits = torch.randn(V)

    def timeit(f, k=200):
        f()
        ts = []
        for _ in range(k):
            t = time.perf_counter()
            f()
            ts.append((time.perf_counter() - t) * 1e6)
        return statistics.median(ts)

    print("\n| apply variant (random 50% mask) | median us |\n|---|---|")
    us = timeit(lambda: logits.clone().masked_fill_(~boolmask, float("-inf")))
    print(f"| torch masked_fill_(~mask, -inf) | {us:.0f} |")
    T = np.array([-np.inf, 0.0], dtype=np.float32)
    us = timeit(lambda: logits.clone().add_(torch.from_numpy(np.take(T, bits))))
    print(f"| numpy table gather + add | {us:.0f} |")
    out = np.empty(V, np.float32)
    o32 = out.view(np.int32)

    def intops():
        np.copyto(o32, bits, casting="unsafe")
        np.subtract(o32, 1, out=o32)
        np.bitwise_and(o32, np.int32(-8388608), out=o32)
        ln = logits.clone().numpy()
        np.add(ln, out, out=ln)
    print(f"| integer ops + numpy add (ours) | {timeit(intops):.0f} |")


if __name__ == "__main__":
    main()
