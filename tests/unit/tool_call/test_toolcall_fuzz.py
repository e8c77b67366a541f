"""Property tests: the canonical JSON scanner, and arbitrary text through every processor (never raises, and
streaming agrees with decode for every split)."""
from __future__ import annotations

import json
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mindie_like.tool_call.families import (
    DS_CALL_BEGIN, DS_CALL_END, DS_CALLS_BEGIN, DS_CALLS_END, DS_SEP, DSML_CALLS_BEGIN, DSML_INVOKE,
    DSML_INVOKE_END, DSML_PARAM, DSML_PARAM_END,
)
from mindie_like.tool_call.json_stream import DONE, NEED, JsonScanner
from tc_helpers import ALL_FAMILIES, assemble, calls_of, proc, run_stream

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


def _scan(text: str, cuts: list[int]):
    out: list[str] = []
    sc = JsonScanner(out.append)
    buf, pos = "", 0
    bounds = [0] + sorted(set(c for c in cuts if 0 < c < len(text))) + [len(text)]
    for a, b in zip(bounds, bounds[1:]):
        buf = buf[pos:] + text[a:b]
        status, pos = sc.scan(buf, 0, False)
        if status != NEED:
            return status, "".join(out)
    status, pos = sc.scan(buf[pos:], 0, True)
    return status, "".join(out)


@SETTINGS
@given(value=json_values, indent=st.sampled_from([None, 0, 2]), ascii_=st.booleans(),
       cuts=st.lists(st.integers(0, 400), max_size=8))
def test_canonical_equals_json_dumps_for_every_split(value, indent, ascii_, cuts):
    text = json.dumps(value, indent=indent, ensure_ascii=ascii_)
    status, canon = _scan(text, cuts)
    assert status == DONE
    assert canon == json.dumps(json.loads(text), ensure_ascii=False)


@SETTINGS
@given(text=st.text(alphabet='{}[]",:\\ u0123abcdefnrtl.-eE\n', max_size=40), cuts=st.lists(st.integers(0, 40)))
def test_scanner_on_junk_is_split_invariant(text, cuts):
    assert _scan(text, cuts) == _scan(text, [])


PIECES = ["<tool_call>", "</tool_call>", "[TOOL_CALLS]", "[ARGS]", "<|python_tag|>", "<|assistant|>", "✿FUNCTION✿",
          "✿ARGS✿", "✿RESULT✿", DS_CALLS_BEGIN, DS_CALL_BEGIN, DS_SEP, DS_CALL_END, DS_CALLS_END, DSML_CALLS_BEGIN,
          DSML_INVOKE, ' name="f">', DSML_PARAM, DSML_PARAM_END, DSML_INVOKE_END, "<function=f>", "<parameter=a>",
          "</parameter>", "</function>", "```json\n", "```", '{"name": "f", "arguments": {"a": 1}}',
          '{"name": "f", "parameters": {', '"name"', '"arguments"', ": ", ", ", "{", "}", "[", "]", '"', "\\",
          "f\n", "function", "\n", " ", ";", "tool_call(a=1)", "杭州😀", "x", "1", "null", "tru",
          '{"type": "function", "function": ', '"description": "d", ', '{"a": ', '"name": "f"']
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
    "a": {"type": "integer"}}}}}]
texts = st.one_of(st.text(max_size=60), st.lists(st.sampled_from(PIECES), max_size=14).map("".join))


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts, tools=st.sampled_from([None, TOOLS]), seed=st.integers(0, 2**16))
def test_arbitrary_text_every_processor(text, tools, seed):
    rng = random.Random(seed)
    for family in ALL_FAMILIES:
        p = proc(family)
        res = p.decode(text, tools)
        assert isinstance(res["content"], str) and isinstance(res["tool_calls"], list)
        for c in res["tool_calls"]:
            assert isinstance(json.loads(c["function"]["arguments"]), dict)
        if not res["tool_calls"]:
            assert res["content"] == text
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 6))))
        bounds = [0] + cuts + [len(text)]
        s, deltas = run_stream(p, [text[a:b] for a, b in zip(bounds, bounds[1:])], tools)
        content, _ = assemble(deltas)
        assert not s.dead
        assert content == res["content"] and calls_of(s.result()) == calls_of(res), (family, text)
