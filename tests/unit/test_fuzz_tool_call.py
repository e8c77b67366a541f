"""Hostile model output through every tool-call processor: any Unicode (lone surrogates and control characters
included) and random joins of every family's markup, calls with arbitrary JSON arguments (marker strings inside
their strings), and huge inputs. Each processor must never raise, streaming must equal decode
for any split, and a well-formed call must come back with exactly its arguments.

Time-boxed: the default run keeps a few dozen examples each; `-m fuzz` runs MINDIE_FUZZ_EXAMPLES (default 2000).
"""
from __future__ import annotations

import json
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.tool_call_text import render
from tool_call.tc_helpers import ALL_FAMILIES, FUZZ_PIECES, MARKERS_TEXT, assemble, calls_of, proc, run_stream

FULL = int(os.environ.get("MINDIE_FUZZ_EXAMPLES", "2000"))
# JSON-argument formats: render() writes their arguments as JSON text, so any JSON value must survive
JSON_FAMILIES = ("qwen2_5", "qwen3", "llama3", "mistral", "deepseek_v3", "deepseek_v31", "glm4", "qwen1_5_or_2")

any_char = st.characters(codec=None, categories=None)     # every code point, lone surrogates too
hostile_text = st.one_of(
    st.text(any_char, max_size=200),
    st.lists(st.sampled_from(FUZZ_PIECES), max_size=14).map("".join),
    st.lists(st.one_of(st.sampled_from(MARKERS_TEXT + ("{", "}", '"', "\\", "\n", "\x00", "\ud800", "\u202e")),
                       st.text(any_char, max_size=5)), max_size=40).map("".join))
json_args = st.dictionaries(
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=12),
    st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False,
                 allow_infinity=False) | st.text(st.characters(codec="utf-8"), max_size=30) | st.sampled_from(MARKERS_TEXT),
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                 max_leaves=12),
    max_size=5)


def _sizes(ci: int):
    """Two settings objects for one property: the CI-sized run and the full one (marker `fuzz`)."""
    common = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))
    return [pytest.param(settings(max_examples=ci, derandomize=True, **common), id="ci"),
            pytest.param(settings(max_examples=FULL, **common), id="full", marks=pytest.mark.fuzz)]


def _splits(text: str, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(1, 12))))
    bounds = [0] + cuts + [len(text)]
    return [[text], list(text), [text[a:b] for a, b in zip(bounds, bounds[1:])]]


def _stream_equals_decode(family: str, text: str, tools, seed: int) -> dict:
    p = proc(family)
    expected = p.decode(text, tools)
    assert isinstance(expected["content"], str) and isinstance(expected["tool_calls"], list)
    for chunks in _splits(text, seed):
        s, deltas = run_stream(p, chunks, tools)
        content, _ = assemble(deltas)
        assert not s.dead
        assert content == expected["content"], (family, chunks)
        assert calls_of(s.result()) == calls_of(expected), (family, chunks)
    return expected


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize("cfg", _sizes(60))
def test_any_unicode_through_every_processor(cfg):
    @cfg
    @given(text=hostile_text, tools=st.sampled_from([None, TOOLS]), seed=st.integers(0, 2**16))
    def prop(text, tools, seed):
        for family in ALL_FAMILIES:
            res = _stream_equals_decode(family, text, tools, seed)
            for c in res["tool_calls"]:
                assert isinstance(json.loads(c["function"]["arguments"]), dict)
            if not res["tool_calls"]:
                assert res["content"] == text, (family, text)     # no call parsed: the text comes back whole
    prop()


@pytest.mark.parametrize("cfg", _sizes(40))
def test_calls_with_arbitrary_json_arguments_round_trip(cfg):
    @cfg
    @given(family=st.sampled_from(JSON_FAMILIES), args=json_args, before=st.sampled_from(["", "Sure. "]),
           seed=st.integers(0, 2**16))
    def prop(family, args, before, seed):
        text = render(family, [("get_weather", args)], before=before)
        res = _stream_equals_decode(family, text, TOOLS, seed)
        assert [c["function"]["name"] for c in res["tool_calls"]] == ["get_weather"], (family, text)
        assert json.loads(res["tool_calls"][0]["function"]["arguments"]) == args
    prop()


# sizes chosen so the 13 processors take seconds, not minutes, on a busy 2-core machine (work is linear in them)
HUGE = {
    "200k plain characters": "x" * 200_000,
    "3k open markers": "<tool_call>" * 3_000,
    "10k open braces": "{" * 10_000,
    "an argument nested 20k deep": '<tool_call>{"name": "get_weather", "arguments": ' + '{"a": ' * 20_000
                                   + "1" + "}" * 20_000 + "}</tool_call>",
    "a 1 MB string argument": '<tool_call>{"name": "get_weather", "arguments": {"a": "' + "y" * 1_000_000
                              + '"}}</tool_call>',
    "1k calls": "".join('<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>' for _ in range(1_000)),
}


@pytest.mark.parametrize("name", list(HUGE))
def test_huge_outputs_do_not_break_any_processor(name):
    """Fed whole and in 4 KB pieces: no exception, no recursion error, the stream agrees with decode."""
    text = HUGE[name]
    for family in ALL_FAMILIES:
        p = proc(family)
        expected = p.decode(text, TOOLS)
        s, deltas = run_stream(p, [text[i:i + 4096] for i in range(0, len(text), 4096)], TOOLS)
        content, _ = assemble(deltas)
        assert content == expected["content"] and calls_of(s.result()) == calls_of(expected), family
