"""Each family's own cases beyond the fixtures: parallel calls, 6-deep nesting, strings holding braces, quotes
and other families' markers, CJK and emoji, empty arguments, content around calls, truncation at every prefix."""
from __future__ import annotations

import json
import re
import zlib

import pytest

from tc_helpers import (
    MARKERS_TEXT, TOOL_FAMILIES, XML_FAMILIES, assemble, calls_of, check_split_invariance, proc, run_stream, tools_for,
)
from tests.support.tool_call_text import render

NESTED = {"a": {"b": {"c": {"d": {"e": {"f": [1, {"g": "deep"}, [True, None]]}}}}}}
TRICKY = {"code": 'if (x) { return [1, 2]; } // "quoted" \'single\' \\ back\\slash }}]]',
          "markers": " ".join(MARKERS_TEXT) + ' {"name": "evil", "arguments": {}}',
          "n": -12.5e3, "flag": False}
CJK = {"city": "杭州", "note": "天気は晴れ ☀️ 😀 émoji", "键": "✅ 值"}
CASES = {
    "single": [("get_weather", {"city": "Paris", "days": 3})],
    "parallel": [("get_weather", {"city": "Tokyo"}), ("search", {"q": "cats", "limit": 10}),
                 ("get_weather", {"city": "Paris", "unit": "celsius"})],
    "nested6": [("process", NESTED)],
    "tricky_strings": [("write_file", TRICKY)],
    "cjk_emoji": [("get_weather", CJK)],
    "empty_args": [("get_time", {}), ("ping", {})],
}


def _fits(family: str, case: str) -> bool:
    # XML-parameter formats carry values as raw text: a non-string value must be JSON, strings cannot contain
    # the closing tag (not a limit of ours: the format has no escaping). Our TRICKY strings hold none of those.
    return True


def _expected(calls):
    return [(n, json.dumps(a, ensure_ascii=False)) for n, a in calls]


def _squash(s: str) -> str:
    return re.sub(r"\s+", "", s)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("family", TOOL_FAMILIES)
def test_family_case_decode_and_splits(family, case):
    calls = CASES[case]
    tools = tools_for(calls)
    p = proc(family)
    variants = (0, 1) if family in ("llama3", "mistral") else (0,)
    for variant in variants:
        before, after = ("Let me check that. ", " Anything else?") if case in ("single", "parallel") else ("", "")
        if family == "glm4" or family == "chatglm3":
            after = ""  # a name-line segment runs to the end of the output
        text = render(family, calls, before=before, after=after, variant=variant)
        res = p.decode(text, tools)
        assert calls_of(res) == _expected(calls), (text, res)
        assert _squash(res["content"]) == _squash(before + after), res["content"]
        check_split_invariance(p, text, tools, n=200, seed=zlib.crc32(f"{family}{case}{variant}".encode()))


@pytest.mark.parametrize("family", [f for f in TOOL_FAMILIES if f not in XML_FAMILIES])
def test_family_without_declared_tools(family):
    """decode(text) without tools still parses the family's own format (names are then not checked)."""
    calls = CASES["parallel"]
    res = proc(family).decode(render(family, calls))
    assert calls_of(res) == _expected(calls)


@pytest.mark.parametrize("family", TOOL_FAMILIES)
def test_family_truncated_at_every_prefix(family):
    calls = CASES["parallel"] + CASES["tricky_strings"]
    tools = tools_for(calls)
    p = proc(family)
    text = render(family, calls)
    full = calls_of(p.decode(text, tools))
    assert full == _expected(calls)
    for n in range(len(text) + 1):
        prefix = text[:n]
        res = p.decode(prefix, tools)
        got = calls_of(res)
        assert got == full[:len(got)], (family, prefix)
        if not got and not p.spec.channels:   # harmony markup is never content, even cut off
            assert res["content"] == prefix
        s, deltas = run_stream(p, [prefix[: n // 3], prefix[n // 3:]], tools)
        content, streamed = assemble(deltas)
        assert content == res["content"]
        assert calls_of(s.result()) == got
        # whatever streamed for a call is a prefix of its final arguments
        for (name, args), (fname, fargs) in zip(streamed, full):
            assert name == fname and fargs.startswith(args)


@pytest.mark.parametrize("family", TOOL_FAMILIES)
def test_several_calls_in_one_delta_keep_their_index(family):
    calls = CASES["parallel"]
    tools = tools_for(calls)
    p = proc(family)
    s, deltas = run_stream(p, [render(family, calls)], tools)
    content, streamed = assemble(deltas)
    assert streamed == _expected(calls)
    ids = [d["tool_calls"][0]["id"] for d in deltas if "tool_calls" in d and "id" in d["tool_calls"][0]]
    assert len(set(ids)) == 3


def test_passthrough_families_never_report_calls():
    for family in ("passthrough", "chatglm2"):
        for fam2 in TOOL_FAMILIES:
            text = render(fam2, CASES["single"])
            res = proc(family).decode(text, tools_for(CASES["single"]))
            assert res == {"content": text, "tool_calls": []}
