"""benchmarks/loadgen: what kind of output a stream's first output event carried, and the per-kind summary."""
from __future__ import annotations

from benchmarks.loadgen import LoadResult, RequestRecord, _absorb_delta


def test_absorb_delta_names_the_kind_of_output():
    rec, calls = RequestRecord(0, True, True), {}
    assert _absorb_delta(rec, {"delta": {"role": "assistant", "content": ""}}, calls) == ""
    assert _absorb_delta(rec, {"delta": {"reasoning_content": "hm"}}, calls) == "reasoning"
    assert _absorb_delta(rec, {"delta": {"content": "Hi"}}, calls) == "content"
    head = {"index": 0, "id": "call_1", "function": {"name": "f", "arguments": ""}}
    assert _absorb_delta(rec, {"delta": {"tool_calls": [head]}}, calls) == "tool_call"
    assert rec.text == "Hi" and calls == {0: {"name": "f", "arguments": ""}}


def test_summary_splits_first_output_by_kind():
    recs = []
    for i, (kind, s) in enumerate([("content", 0.05), ("content", 0.07), ("tool_call", 0.3)]):
        recs.append(RequestRecord(i, True, True, ok=True, first_output_s=s, first_output_kind=kind))
    s = LoadResult({}, 1.0, recs).summary()
    assert s["first_output_ms"]["p50"] == 70.0
    assert s["first_output_ms_by_kind"] == {"content": {"p50": 60.0, "n": 2}, "tool_call": {"p50": 300.0, "n": 1}}
