#!/usr/bin/env python3
"""Streaming tool-call parsing cost: is it linear in the output length?

One Qwen2.5/Qwen3-style call (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`) whose arguments are
4, 16, 64 and 256 KiB of JSON (code-like strings with escapes and non-ASCII, numbers, nested arrays and objects),
fed to our stream parser in 4-character deltas. Reported next to it:
- one non-streaming `decode` of the same text;
- (4, 16, 64 KiB only: it is quadratic) the re-parse-everything baseline that vLLM's hermes parser and MindIE's
  older parsers use: on every delta, take the whole text of the call, parse it with `partial_json_parser`
  (vLLM's dependency) and `json.dumps` the arguments to diff them against what was already sent.

Usage: python benchmarks/bench_tool_parse.py [--runs 5] [--baseline-runs 1] [--sizes 4,16,64,256] [--baseline-sizes 4,16,64]
Needs `partial-json-parser` for the baseline (pip install partial-json-parser; the [bench] extra has it).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mindie_like.tool_call import ToolsCallProcessorManager  # noqa: E402

DELTA = 4


def make_arguments(kib: int) -> dict:
    """A JSON object whose serialization is about `kib` KiB: files with code, metadata and numbers."""
    target = kib * 1024
    files, size, i = [], 0, 0
    while size < target:
        body = (f'def handler_{i}(event):\n    """Process {{event}} #{i} — naïve café ☕"""\n'
                f'    if event.get("type") == "click" and event["x"] > {i % 97}:\n'
                f'        return {{"ok": True, "path": "C:\\\\tmp\\\\f{i}.txt", "tags": ["a", "b"]}}\n'
                f"    return None\n")
        f = {"name": f"src/module_{i}.py", "size": len(body), "ratio": round(i / 7, 3), "binary": False,
             "owners": [{"id": i, "team": "tool-calling", "level": [1, 2, {"deep": i % 5}]}], "content": body}
        files.append(f)
        size += len(json.dumps(f, ensure_ascii=False)) + 2
        i += 1
    return {"repository": "mindie_like", "branch": "main", "files": files}


def make_text(kib: int) -> tuple[str, str]:
    args = make_arguments(kib)
    canon = json.dumps(args, ensure_ascii=False)
    raw = json.dumps(args, ensure_ascii=False, indent=1)  # the model's own layout differs from the canonical one
    return f'<tool_call>\n{{"name": "write_files", "arguments": {raw}}}\n</tool_call>', canon


def deltas_of(text: str) -> list[str]:
    return [text[i:i + DELTA] for i in range(0, len(text), DELTA)]


def run_ours(proc, deltas: list[str]) -> tuple[float, float, str]:
    w0, c0 = time.perf_counter(), time.process_time()
    s = proc.new_stream()
    args = []
    for d in deltas:
        for out in s.feed(d):
            for tc in out.get("tool_calls", ()):
                args.append(tc["function"]["arguments"])
    for out in s.finish():
        for tc in out.get("tool_calls", ()):
            args.append(tc["function"]["arguments"])
    return time.perf_counter() - w0, time.process_time() - c0, "".join(args)


def run_decode(proc, text: str) -> tuple[float, float, str]:
    w0, c0 = time.perf_counter(), time.process_time()
    res = proc.decode(text)
    return time.perf_counter() - w0, time.process_time() - c0, res["tool_calls"][0]["function"]["arguments"]


def run_baseline(deltas: list[str]) -> tuple[float, float, str]:
    """vLLM-hermes-style: re-parse the whole call text on every delta."""
    from partial_json_parser import Allow, loads

    w0, c0 = time.perf_counter(), time.process_time()
    acc, sent = "", ""
    for d in deltas:
        acc += d
        i = acc.find("<tool_call>")
        if i < 0:
            continue
        body = acc[i + len("<tool_call>"):]
        j = body.find("</tool_call>")
        body = (body if j < 0 else body[:j]).strip()
        if not body:
            continue
        try:
            obj = loads(body, Allow.ALL)
        except Exception:
            continue
        if not isinstance(obj, dict) or "arguments" not in obj:
            continue
        cur = json.dumps(obj["arguments"], ensure_ascii=False)
        if j >= 0:
            sent = cur
            continue
        k = 0  # stable prefix: what vLLM would have sent by now
        while k < len(sent) and k < len(cur) and sent[k] == cur[k]:
            k += 1
        sent = cur[:k] if k < len(sent) else cur[:max(len(sent), len(cur) - 2)]
    return time.perf_counter() - w0, time.process_time() - c0, sent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--baseline-runs", type=int, default=1, help="the baseline takes minutes at 64 KiB")
    ap.add_argument("--sizes", default="4,16,64,256")
    ap.add_argument("--baseline-sizes", default="4,16,64")
    ap.add_argument("--json", action="store_true", help="print raw results as JSON too")
    a = ap.parse_args()
    sizes = [int(x) for x in a.sizes.split(",") if x]
    bsizes = [int(x) for x in a.baseline_sizes.split(",") if x]
    proc = ToolsCallProcessorManager.get_tool_call_processor("qwen2_5")()
    warm_text, _ = make_text(4)  # untimed warm-up: imports, regex compilation, allocator
    run_ours(proc, deltas_of(warm_text))
    proc.decode(warm_text)
    rows = []
    for kib in sizes:
        text, canon = make_text(kib)
        deltas = deltas_of(text)
        ours, dec, base = [], [], []
        for run in range(a.runs):
            w, c, args = run_ours(proc, deltas)
            assert args == canon, "streamed arguments differ from the canonical serialization"
            ours.append((w, c))
            w, c, args = run_decode(proc, text)
            assert args == canon
            dec.append((w, c))
            if kib in bsizes and run < a.baseline_runs:
                w, c, args = run_baseline(deltas)
                assert json.loads(args) == json.loads(canon)
                base.append((w, c))
        med = lambda xs, k: statistics.median(x[k] for x in xs)  # noqa: E731
        row = {"kib": kib, "chars": len(text), "deltas": len(deltas),
               "ours_wall_s": med(ours, 0), "ours_cpu_s": med(ours, 1),
               "decode_wall_s": med(dec, 0), "decode_cpu_s": med(dec, 1)}
        if base:
            row["baseline_wall_s"], row["baseline_cpu_s"] = med(base, 0), med(base, 1)
        rows.append(row)
        print(f"{kib} KiB done", file=sys.stderr, flush=True)

    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores, "
          f"delta = {DELTA} chars, median of {a.runs} runs ({a.baseline_runs} for the baseline); CPU time, wall in brackets\n")
    print("| arguments | deltas | ours: stream | ours: ms/KiB | decode (one call) | re-parse baseline | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        per = r["ours_cpu_s"] * 1000 / r["kib"]
        base = (f"{r['baseline_cpu_s'] * 1000:.0f} ms ({r['baseline_wall_s'] * 1000:.0f})"
                if "baseline_cpu_s" in r else "—")
        speed = f"{r['baseline_cpu_s'] / r['ours_cpu_s']:.0f}x" if "baseline_cpu_s" in r else "—"
        print(f"| {r['kib']} KiB | {r['deltas']} | {r['ours_cpu_s'] * 1000:.1f} ms ({r['ours_wall_s'] * 1000:.1f}) "
              f"| {per:.2f} | {r['decode_cpu_s'] * 1000:.1f} ms ({r['decode_wall_s'] * 1000:.1f}) | {base} | {speed} |")
    per_kib = [r["ours_cpu_s"] / r["kib"] for r in rows]
    print(f"\nper-KiB cost, largest / smallest size: {max(per_kib) / min(per_kib):.2f}x "
          f"(from {rows[0]['kib']} to {rows[-1]['kib']} KiB; linear means ~1)")
    if a.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
