"""Where the memory of refused hostile requests goes, and what the allocator keeps of it (in one process, no daemon).

    python benchmarks/bench_hostile_memory.py [--rounds 3] [--no-tuning]

Each hostile body (10k tools, a 200k-value enum, a 1e6-entry stop list, a 5 MB prompt) goes through what the
daemon does before refusing it: the guard's JSON parse and the protocol's validation. For each: the Python peak
that tracemalloc saw, then RSS after the objects are freed, and after `malloc_trim(0)`. `--no-tuning` leaves
glibc's allocator as it starts (mindie_like.server.memory.configure_allocator is what the daemon calls).
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mindie_like.protocol import ValidationFailure, parse_chat_request  # noqa: E402
from mindie_like.server import memory  # noqa: E402
from mindie_like.server.errors import ApiError  # noqa: E402
from mindie_like.server.guard import parse_json  # noqa: E402


def bodies() -> dict[str, bytes]:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    tools = [{"type": "function", "function": {"name": f"f{i}", "description": "x" * 50, "parameters": {
        "type": "object", "properties": {"a": {"type": "string"}}}}} for i in range(10_000)]
    enum = {"type": "json_schema", "json_schema": {"name": "e", "schema": {"enum": [f"v{i}" for i in range(200_000)]}}}
    return {"10k tools": json.dumps({**base, "tools": tools}).encode(),
            "200k enum": json.dumps({**base, "response_format": enum}).encode(),
            "1e6 stop list": json.dumps({**base, "stop": [f"s{i}" for i in range(1_000_000)]}).encode(),
            "5 MB prompt": json.dumps({**base, "messages": [{"role": "user", "content": "a " * 2_500_000}]}).encode()}


def handle(raw: bytes) -> str:
    try:
        parse_chat_request(parse_json(raw, 100))
    except (ValidationFailure, ApiError) as e:
        return f"refused {e.status}"
    return "accepted by validation (refused later: prompt length, grammar)"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-tuning", action="store_true")
    a = ap.parse_args()
    if not a.no_tuning:
        memory.configure_allocator()
    mb = 2 ** 20
    raw = bodies()
    gc.collect()
    start = memory.rss_bytes()
    print(f"allocator tuning: {'off' if a.no_tuning else 'on'}; RSS with the bodies built: {start / mb:.0f} MB")
    for r in range(a.rounds):
        for name, body in raw.items():
            tracemalloc.start()
            outcome = handle(body)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            gc.collect()
            kept = memory.rss_bytes()
            print(f"round {r}  {name:<14} {len(body) / mb:6.1f} MB body  {outcome:<60} python peak "
                  f"{peak / mb:7.1f} MB  RSS +{(kept - start) / mb:7.1f} MB after free")
    before_trim = memory.rss_bytes()
    memory.trim()
    print(f"after {a.rounds} rounds: RSS +{(before_trim - start) / mb:.0f} MB; after malloc_trim(0) "
          f"+{(memory.rss_bytes() - start) / mb:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
