"""The request guard (server/guard.py) under arbitrary bytes: parse_json either returns what orjson parses or
raises the 422 ApiError, never anything else; the bracket scanner and the value walker agree on the depth of
every JSON value; the depth limit holds for any nesting. Time-boxed: `-m fuzz` runs MINDIE_FUZZ_EXAMPLES."""
from __future__ import annotations

import json
import os

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mindie_like.server.errors import ApiError
from mindie_like.server.guard import json_max_depth, parse_json, value_max_depth

FULL = int(os.environ.get("MINDIE_FUZZ_EXAMPLES", "2000"))


def _sizes(ci: int):
    common = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))
    return [pytest.param(settings(max_examples=ci, derandomize=True, **common), id="ci"),
            pytest.param(settings(max_examples=FULL, **common), id="full", marks=pytest.mark.fuzz)]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8"), max_size=10).map(lambda s: s + '"[{\\'),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=30)
json_ish_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from([b"{", b"}", b"[", b"]", b'"', b"\\", b":", b",", b"1", b"null", b'"a"', b"\xff",
                              b"\xc3", b"\xed\xa0\x80", b"\x00", b" "]), max_size=80).map(b"".join))


@pytest.mark.parametrize("cfg", _sizes(300))
def test_arbitrary_bytes_parse_or_get_422(cfg):
    @cfg
    @given(raw=json_ish_bytes, limit=st.integers(10, 100))
    def prop(raw, limit):
        try:
            value = parse_json(raw, limit)
        except ApiError as e:
            assert e.status == 422 and e.error_type == "Input Validation Error"
            return
        assert value == orjson.loads(raw)
        assert value_max_depth(value) <= limit
    prop()


@pytest.mark.parametrize("cfg", _sizes(120))
def test_scanner_and_walker_agree_on_depth(cfg):
    @cfg
    @given(value=json_values, indent=st.sampled_from([None, 1]))
    def prop(value, indent):
        raw = json.dumps(value, indent=indent, ensure_ascii=False).encode()
        assert json_max_depth(raw) == value_max_depth(value)
    prop()


@pytest.mark.parametrize("cfg", _sizes(100))
def test_depth_limit_holds_for_any_nesting(cfg):
    @cfg
    @given(depth=st.integers(0, 3000), limit=st.integers(10, 100),
           opener=st.sampled_from([("[", "]"), ('{"k":', "}")]))
    def prop(depth, limit, opener):
        o, c = opener
        raw = (o * depth + "0" + c * depth).encode()
        try:
            parse_json(raw, limit)
        except ApiError as e:
            assert e.status == 422 and depth - 1 > limit and f"depth {depth - 1} " in e.message
            return
        assert depth - 1 <= limit
    prop()
