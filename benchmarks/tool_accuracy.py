"""Tool-calling accuracy per weight format, BFCL-style, through the real daemon: the cost of quantization measured
on what a user gets back.

    PYTHONPATH=. python -m benchmarks.tool_accuracy [--gguf PATH] [--formats float,w8a16,w4a16,gguf] \\
        [--cases benchmarks/data/tool_accuracy_cases.json] [--ids id1,id2] [--threads 1] [--max-tokens 200] \\
        [--out benchmarks/results/tool_accuracy_<UTC time>.json]

For each format the daemon starts once (mutual TLS, generated certificates, a config made from conf/config.json:
benchmarks.serve_bench.OurDaemon) with `numThreads` threads and that format's ModelConfig keys (FORMATS below:
"float" is the model as served by default; "bf16", not run by default, separates the dtype's share of the
differences), and every case is sent, one at a time, through the official `openai` client: one user message, the
case's tools, tool_choice "auto", temperature 0. The returned `tool_calls` are scored against the case's expected
calls (see score_case and the cases file's description):

* a case with expected calls is right when the answer has exactly as many calls and they pair off one to one
  with the expected ones (any order): same function name, arguments parsed as JSON and compared as values;
* an irrelevance case (no expected call) is right when the answer has no call.

Reported per format: accuracy by category and overall, load and request wall times, load average; and per
quantized format its agreement with the float format's answers (the same calls, compared as values, or no call in
both). Writes the JSON after each format (an interrupted run keeps what it measured) and prints markdown tables.

The scoring functions at the top are pure (no torch, no network): tests/unit/test_tool_accuracy_scoring.py.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import ssl
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_CASES = REPO / "benchmarks" / "data" / "tool_accuracy_cases.json"
DEFAULT_GGUF = REPO / "models" / "qwen2.5-coder-0.5b-instruct" / "qwen2.5-coder-0.5b-instruct.gguf"
CATEGORIES = ("simple", "multiple", "parallel", "nested", "irrelevance")
# ModelConfig[0] keys per format. "float" adds nothing: the model as the default config serves it (dtype auto;
# float32 on CPUs without native bf16). Quantized formats run with dtype bfloat16 as docs/quantization.md
# recommends; "bf16" is that dtype without quantization, to tell the cost of the dtype from the quantization's.
FORMATS = {
    "float": {},
    "bf16": {"dtype": "bfloat16"},
    "w8a16": {"dtype": "bfloat16", "quantization": "w8a16"},
    "w4a16": {"dtype": "bfloat16", "quantization": "w4a16"},
    "gguf": {"dtype": "bfloat16", "quantization": "gguf"},
}


# ---------------------------------------------------------------- scoring (pure)

def _norm(s: str) -> str:
    return s.strip().casefold()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def values_equal(expected: Any, got: Any) -> bool:
    """JSON values compared as values: numbers as numbers (2 == 2.0, but not "2" or true), strings after trimming
    and case-folding, arrays in order, objects by keys; {"$any_of": [...]} in `expected` accepts any listed value."""
    if isinstance(expected, dict) and set(expected) == {"$any_of"}:
        return any(values_equal(e, got) for e in expected["$any_of"])
    if isinstance(expected, bool) or expected is None:
        return type(got) is type(expected) and got == expected
    if _is_number(expected):
        return _is_number(got) and math.isclose(expected, got, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(expected, str):
        return isinstance(got, str) and _norm(expected) == _norm(got)
    if isinstance(expected, list):
        return isinstance(got, list) and len(got) == len(expected) and all(map(values_equal, expected, got))
    if isinstance(expected, dict):
        return (isinstance(got, dict) and set(got) == set(expected)
                and all(values_equal(v, got[k]) for k, v in expected.items()))
    raise TypeError(f"not a JSON value: {expected!r}")


def parse_call(name: str, arguments: str) -> dict:
    """A returned call as {"name", "arguments": parsed object or None, "raw": the arguments string}."""
    try:
        args = json.loads(arguments)
    except (TypeError, ValueError):
        args = None
    return {"name": name, "arguments": args if isinstance(args, dict) else None, "raw": arguments}


def call_mismatch(expected: dict, got: dict) -> Optional[str]:
    """Why `got` is not `expected` (None when it is): name, then each argument."""
    if got["name"] != expected["name"]:
        return f"called {got['name']} instead of {expected['name']}"
    args = got["arguments"]
    if args is None:
        return f"{got['name']}: arguments are not a JSON object: {got['raw']!r}"
    required = expected.get("arguments", {})
    optional = expected.get("optional_arguments", {})
    for key, want in required.items():
        if key not in args:
            return f"{got['name']}: missing argument {key}"
        if not values_equal(want, args[key]):
            return f"{got['name']}: {key} = {json.dumps(args[key])}, expected {json.dumps(want)}"
    for key, value in args.items():
        if key in required:
            continue
        if key not in optional:
            return f"{got['name']}: unexpected argument {key} = {json.dumps(value)}"
        allowed = optional[key]
        if allowed is not None and not any(values_equal(a, value) for a in allowed):
            return f"{got['name']}: {key} = {json.dumps(value)}, expected one of {json.dumps(allowed)} or nothing"
    return None


def pair_off(left: list, right: list, matches: Callable[[Any, Any], bool]) -> bool:
    """Whether the two lists pair off one to one under `matches` (in any order; the lists are a few calls long,
    so a backtracking search is enough)."""
    if len(left) != len(right):
        return False

    def place(i: int, used: set) -> bool:
        if i == len(left):
            return True
        return any(j not in used and matches(left[i], right[j]) and place(i + 1, used | {j})
                   for j in range(len(right)))

    return place(0, set())


def score_case(expected: list[dict], got: list[dict]) -> tuple[bool, str]:
    """(right, why) for one answer: `got` = its parsed calls (parse_call), `expected` = the case's calls."""
    if not expected:
        return (not got, "no call" if not got else "called " + ", ".join(c["name"] for c in got))
    if len(got) != len(expected):
        return False, f"{len(got)} calls, expected {len(expected)}"
    if pair_off(expected, got, lambda e, g: call_mismatch(e, g) is None):
        return True, "match"
    if len(expected) == 1:
        return False, call_mismatch(expected[0], got[0])
    return False, "calls do not pair off with the expected ones: " + "; ".join(
        filter(None, (min((call_mismatch(e, g) or "" for g in got), key=len) for e in expected)))


def calls_agree(a: list[dict], b: list[dict]) -> bool:
    """Two answers make the same calls: names equal and arguments equal as values (unparsable arguments: the
    same string), in any order; no call in both counts as agreeing."""
    def same(x: dict, y: dict) -> bool:
        if x["name"] != y["name"]:
            return False
        if x["arguments"] is None or y["arguments"] is None:
            return x["raw"] == y["raw"]
        return values_equal(x["arguments"], y["arguments"])

    return pair_off(a, b, same)


def summarize(records: list[dict]) -> dict:
    """Accuracy by category (in CATEGORIES order, then any other) and overall, from scored case records."""
    by_cat: dict[str, list[int]] = {}
    for r in records:
        by_cat.setdefault(r["category"], [0, 0])
        by_cat[r["category"]][0] += int(r["correct"])
        by_cat[r["category"]][1] += 1
    order = [c for c in CATEGORIES if c in by_cat] + sorted(set(by_cat) - set(CATEGORIES))
    right = sum(v[0] for v in by_cat.values())
    return {"by_category": {c: {"correct": by_cat[c][0], "total": by_cat[c][1],
                                "accuracy": round(by_cat[c][0] / by_cat[c][1], 4)} for c in order},
            "overall": {"correct": right, "total": len(records),
                        "accuracy": round(right / len(records), 4) if records else None}}


def agreement(reference: list[dict], other: list[dict]) -> dict:
    """How often `other`'s answers make the same calls as `reference`'s, case by case (matched by id; a failed
    request agrees with nothing), and how correctness moved between them."""
    ref = {r["id"]: r for r in reference}
    pairs = [(ref[r["id"]], r) for r in other if r["id"] in ref]
    same = [r["id"] for a, r in pairs
            if not a.get("error") and not r.get("error") and calls_agree(a["calls"], r["calls"])]
    return {"same_calls": len(same), "total": len(pairs),
            "agreement": round(len(same) / len(pairs), 4) if pairs else None,
            "right_in_reference_only": sorted(r["id"] for a, r in pairs if a["correct"] and not r["correct"]),
            "right_in_this_only": sorted(r["id"] for a, r in pairs if r["correct"] and not a["correct"])}


# ---------------------------------------------------------------- running the daemon

def load_cases(path: Path, ids: Optional[list[str]] = None) -> tuple[dict, list[dict]]:
    data = json.loads(path.read_text())
    cases = data["cases"]
    if ids:
        known = {c["id"] for c in cases}
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise SystemExit(f"unknown case ids: {', '.join(unknown)}")
        cases = [c for c in cases if c["id"] in ids]
    return data["tools"], cases


def openai_tools(library: dict, names: list[str]) -> list[dict]:
    return [{"type": "function", "function": {"name": n, **library[n]}} for n in names]


def ask(client, model: str, library: dict, case: dict, max_tokens: int) -> dict:
    """One case as one chat request; its scored record (a failed request is a wrong answer with the error)."""
    import openai
    t = time.monotonic()
    record = {"id": case["id"], "category": case["category"]}
    try:
        resp = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": case["prompt"]}],
            tools=openai_tools(library, case["tools"]), tool_choice="auto", temperature=0, max_tokens=max_tokens)
    except openai.APIError as e:
        return {**record, "correct": False, "why": f"request failed: {e}", "error": True, "calls": [],
                "content": None, "finish_reason": None, "completion_tokens": None,
                "seconds": round(time.monotonic() - t, 2)}
    choice = resp.choices[0]
    calls = [parse_call(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
    correct, why = score_case(case["expected"], calls)
    return {**record, "correct": correct, "why": why, "calls": calls, "content": choice.message.content,
            "finish_reason": choice.finish_reason,
            "completion_tokens": resp.usage.completion_tokens if resp.usage else None,
            "seconds": round(time.monotonic() - t, 2)}


def run_format(fmt: str, args, library: dict, cases: list[dict], home: Path) -> dict:
    """One daemon for `fmt`, every case through the openai client; the scored records and timings."""
    import openai

    from benchmarks.serve_bench import MODEL_NAME, OurDaemon

    out: dict = {"model_config": FORMATS[fmt], "load_avg_before": [round(x, 2) for x in os.getloadavg()]}
    t0 = time.monotonic()
    daemon = OurDaemon(args.gguf, args.threads, home, FORMATS[fmt])
    records = []
    try:
        daemon.start()
        out["start_s"] = round(time.monotonic() - t0, 1)
        lc = daemon.load_config()          # its URL and certificate paths
        ctx = ssl.create_default_context(cafile=lc.ca)
        ctx.load_cert_chain(lc.cert, lc.key)
        client = openai.OpenAI(base_url=lc.url + "/v1", api_key="unused", max_retries=0,
                               timeout=args.request_timeout, http_client=openai.DefaultHttpxClient(verify=ctx))
        t1 = time.monotonic()
        for case in cases:
            records.append(ask(client, MODEL_NAME, library, case, args.max_tokens))
            r = records[-1]
            print(f"  {fmt} {case['id']}: {'right' if r['correct'] else 'WRONG'} ({r['why']}; {r['seconds']} s)",
                  flush=True)
        out["requests_s"] = round(time.monotonic() - t1, 1)
    finally:
        daemon.stop()
    out["wall_s"] = round(time.monotonic() - t0, 1)
    out["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    out["summary"] = summarize(records)
    out["cases"] = records
    return out


def tables(results: dict) -> str:
    formats = list(results["formats"])
    cats = [c for c in CATEGORIES if any(c in f["summary"]["by_category"] for f in results["formats"].values())]
    rows = ["| format | " + " | ".join(cats) + " | overall | same calls as float | start s | requests s |",
            "|---" * (len(cats) + 5) + "|"]
    for fmt in formats:
        r = results["formats"][fmt]
        s = r["summary"]
        cells = [f"{s['by_category'][c]['correct']}/{s['by_category'][c]['total']}" if c in s["by_category"] else ""
                 for c in cats]
        agree = results.get("agreement_with_float", {}).get(fmt)
        agree_cell = f"{agree['same_calls']}/{agree['total']}" if agree else ("—" if fmt == "float" else "")
        rows.append(f"| {fmt} | " + " | ".join(cells) + f" | {s['overall']['correct']}/{s['overall']['total']} "
                    f"({s['overall']['accuracy']:.0%}) | {agree_cell} | {r['start_s']} | {r['requests_s']} |")
    return "\n".join(rows)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.tool_accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf", type=Path, default=DEFAULT_GGUF, help="default: the demo model from bin/fetch_models")
    p.add_argument("--formats", default="float,w8a16,w4a16,gguf", help=f"comma list of {', '.join(FORMATS)}")
    p.add_argument("--cases", type=Path, default=DEFAULT_CASES)
    p.add_argument("--ids", default="", help="comma list of case ids (default: every case)")
    p.add_argument("--threads", type=int, default=1, help="the daemon's numThreads")
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--request-timeout", type=float, default=900)
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/tool_accuracy_<UTC time>.json)")
    args = p.parse_args(argv)
    bad = [f for f in args.formats.split(",") if f not in FORMATS]
    if bad:
        p.error(f"unknown formats: {', '.join(bad)} (known: {', '.join(FORMATS)})")
    if not args.gguf.is_file():
        p.error(f"{args.gguf} not found: run bin/fetch_models or pass --gguf")
    args.gguf = args.gguf.resolve()
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    library, cases = load_cases(args.cases, [i for i in args.ids.split(",") if i])
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%MZ")
    out = args.out or RESULTS / f"tool_accuracy_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    results: dict = {"meta": {"command": " ".join(["python -m benchmarks.tool_accuracy", *sys.argv[1:]]),
                              "started_utc": stamp, "gguf": str(args.gguf), "cases_file": str(args.cases),
                              "cases": len(cases), "categories": dict(Counter(c["category"] for c in cases)),
                              "threads": args.threads, "max_tokens": args.max_tokens, "cpus": os.cpu_count()},
                     "formats": {}}
    for fmt in args.formats.split(","):
        home = Path(tempfile.mkdtemp(prefix=f"tool_accuracy_{fmt}_"))
        try:
            results["formats"][fmt] = run_format(fmt, args, library, cases, home)
        finally:
            shutil.rmtree(home, ignore_errors=True)
        if "float" in results["formats"]:
            ref = results["formats"]["float"]["cases"]
            results["agreement_with_float"] = {f: agreement(ref, r["cases"]) for f, r in results["formats"].items()
                                               if f != "float"}
        results["meta"]["finished_utc"] = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%MZ")
        out.write_text(json.dumps(results, indent=1))
    print(tables(results))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
