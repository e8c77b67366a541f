"""Property tests of the canonical JSON scanner (arbitrary text through every processor:
tests/unit/test_fuzz_tool_call.py)."""
from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mindie_like.tool_call.json_stream import DONE, NEED, JsonScanner

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
