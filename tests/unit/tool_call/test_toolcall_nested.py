"""Marker-less candidates (lenient recovery, Llama 3 bare JSON) only at top level: an object nested inside another
JSON value is never a call, and an echoed tool definition (a `"description"` key) is not a call either.

The first case is what Qwen2.5-Coder-0.5B really wrote: it repeated its `<tools>` block before the call."""
from __future__ import annotations

import json

import pytest

from tc_helpers import ALL_FAMILIES, NEW_FAMILIES, assemble, calls_of, check_split_invariance, proc, run_stream

DELIVERY_FN = {"name": "get_delivery_date",
               "description": "Get the delivery date for a customer's order. Call this whenever you need to know "
                              "the delivery date, for example when a customer asks 'Where is my package'",
               "parameters": {"type": "object", "properties": {
                   "order_id": {"type": "string", "description": "The customer's order ID."}},
                   "required": ["order_id"], "additionalProperties": False}}
TOOLS = [{"type": "function", "function": DELIVERY_FN}]
OUTER = json.dumps({"type": "function", "function": DELIVERY_FN})  # the tool definition, as the model echoed it
CALL = '{"name": "get_delivery_date", "arguments": {"order_id": "999888"}}'
ECHO_THEN_CALL = f"<tools>\n{OUTER}\n</tools>\n<tool_call>\n{CALL}\n</tool_call>"
HERMES = ("qwen2_5", "qwen3", "qwen3_coder")
# gpt_oss is left out: its decode also reports reasoning_content (tested with its own vectors)
TOOL_FAMILIES = [f for f in ALL_FAMILIES + NEW_FAMILIES if f not in ("passthrough", "chatglm2", "gpt_oss")]
ARGS = '{"order_id": "999888"}'


@pytest.mark.parametrize("family", HERMES)
def test_echoed_tools_block_then_call_is_one_call(family):
    p = proc(family)
    res = check_split_invariance(p, ECHO_THEN_CALL, TOOLS, n=200)  # whole text, 1-char deltas, 200 partitions
    assert calls_of(res) == [("get_delivery_date", ARGS)]
    assert res["content"] == f"<tools>\n{OUTER}\n</tools>"


def test_echoed_tools_block_is_released_while_it_streams():
    """The skipped object is content as soon as it is scanned, not held until it closes."""
    s = proc("qwen2_5").new_stream(TOOLS)
    sent = ""
    for i in range(0, len(f"<tools>\n{OUTER}"), 5):
        for d in s.feed(f"<tools>\n{OUTER}"[i:i + 5]):
            assert "tool_calls" not in d
            sent += d["content"]
        assert len(f"<tools>\n{OUTER}"[:i + 5]) - len(sent) <= 16
    assert sent == f"<tools>\n{OUTER}"
    rest = [d for d in s.feed(f"\n</tools>\n<tool_call>\n{CALL}\n</tool_call>") + s.finish()]
    content, calls = assemble(rest)
    assert content == "\n</tools>" and calls == [("get_delivery_date", ARGS)]


@pytest.mark.parametrize("family", TOOL_FAMILIES)
def test_echoed_tools_block_alone_is_content(family):
    p = proc(family)
    for text in (f"<tools>\n{OUTER}\n</tools>", OUTER, f"```json\n{OUTER}\n```"):
        res = check_split_invariance(p, text, TOOLS, n=30)
        assert res == {"content": text, "tool_calls": []}, (family, text)


@pytest.mark.parametrize("family", ["qwen2_5", "llama3", "mistral", "deepseek_v3"])
def test_nested_candidate_inside_fenced_outer_object_is_not_a_call(family):
    nested = ('Here is the call:\n```json\n{"type": "function", "function": ' + CALL + '}\n```\n'
              'and a list: {"calls": [' + CALL + ", " + CALL + "]}")
    res = check_split_invariance(proc(family), nested, TOOLS, n=100)
    assert res == {"content": nested, "tool_calls": []}


@pytest.mark.parametrize("family", TOOL_FAMILIES)
def test_echoed_definition_with_description_is_not_a_call(family):
    flat = json.dumps(DELIVERY_FN)  # {"name": "get_delivery_date", "description": ..., "parameters": {...}}
    after = json.dumps({"name": "get_delivery_date", "parameters": {"order_id": "1"}, "description": "d"})
    for text in (flat, f"Tool:\n```json\n{flat}\n```", after):
        res = proc(family).decode(text, TOOLS)
        assert res == {"content": text, "tool_calls": []}, (family, text)
        check_split_invariance(proc(family), text, TOOLS, n=30, strict_deltas=text != after)
    # llama3 without tools declared: the same rule for its native bare objects
    assert proc("llama3").decode(flat)["tool_calls"] == []


@pytest.mark.parametrize("family", ["qwen2_5", "llama3", "glm4"])
def test_genuine_call_after_a_non_candidate_object_is_recovered(family):
    p = proc(family)
    for before in ('{"type": "function", "function": {"name": "get_delivery_date", "arguments": {"order_id": "0"}}}',
                   json.dumps(DELIVERY_FN), '{"a": 1}', '{}', '{"a": [1, {"b": "}{\\""}]}',
                   '{"a": [1, 2 oops', 'I like { braces }', '{{ jinja }}', '{"a long sentence in quotes {"'):
        for tail in (CALL, f"```json\n{CALL}\n```"):
            text = f"{before} then {tail}"
            res = check_split_invariance(p, text, TOOLS, n=60)
            assert calls_of(res) == [("get_delivery_date", ARGS)], (family, text, res)
            assert res["content"] == f"{before} then", (family, text, res)


def test_family_marker_ends_the_skip():
    text = '{"a": "x <tool_call>\n' + CALL + "\n</tool_call> done"
    res = check_split_invariance(proc("qwen2_5"), text, TOOLS, n=100)
    assert calls_of(res) == [("get_delivery_date", ARGS)] and res["content"] == '{"a": "x  done'
    text = '{"a": [1, <|python_tag|>' + CALL
    res = check_split_invariance(proc("llama3"), text, TOOLS, n=100)
    assert calls_of(res) == [("get_delivery_date", ARGS)] and res["content"] == '{"a": [1,'


def test_value_that_never_closes_is_content():
    for text in ('{"a": ' + CALL, '{"a": [' + CALL + ", ", '```json\n{"a": {"b": ' + CALL):
        for family in ("qwen2_5", "llama3"):
            res = check_split_invariance(proc(family), text, TOOLS, n=60)
            assert res == {"content": text, "tool_calls": []}, (family, text)


def test_raw_newline_in_a_string_ends_the_skip():
    """Strict JSON: a stray quote in prose swallows at most the rest of its line."""
    text = '{"a": "unclosed\n' + CALL
    res = check_split_invariance(proc("qwen2_5"), text, TOOLS, n=60)
    assert calls_of(res) == [("get_delivery_date", ARGS)] and res["content"] == '{"a": "unclosed'


def test_malformed_llama_call_still_resumes_where_it_broke():
    res = check_split_invariance(proc("llama3"), '{"name": "f", "parameters": {{"name": "g", "parameters": {}}',
                                 n=60, strict_deltas=False)
    assert calls_of(res) == [("g", "{}")] and res["content"] == ""


def test_skipping_a_large_object_keeps_the_tail_bounded():
    """A 64 KiB object that is not a call streams as content in 4-character deltas; the undecided tail stays
    bounded (no rescan, nothing held until the object closes)."""
    body = ("x = {'a': [1, 2]}  # \\\"q\\\" 杭州 😀 {\\\"name\\\": \\\"get_delivery_date\\\"} " * 1000)[:65536]
    text = '{"type": "function", "function": {"body": "' + body + '", "nested": ' + CALL + "}} then " + CALL
    assert json.loads(text[:text.index(" then ")])
    p = proc("qwen2_5")
    s = p.new_stream(TOOLS)
    longest, sent = 0, 0
    for i in range(0, len(text), 4):
        for d in s.feed(text[i:i + 4]):
            sent += len(d.get("content", ""))
        longest = max(longest, len(s._src.buf))
        if i + 4 < text.index(" then "):
            assert i + 4 - sent <= 16
    s.finish()
    assert longest <= 64, longest
    assert calls_of(s.result()) == [("get_delivery_date", ARGS)]
    assert s.result() == {"content": text[:text.index(" then ") + 5], "tool_calls": s.tool_calls}
    assert p.decode(text, TOOLS)["content"] == s.content


def test_stream_equals_decode_on_mixed_text():
    text = (f"Sure.\n<tools>\n{OUTER}\n</tools>\n" + '{"x": {"name": "get_delivery_date", "arguments": {}}}\n'
            + "```json\n" + CALL + "\n```\n" + '{"name": "get_delivery_date", "description": "d"}\n' + CALL)
    p = proc("qwen2_5")
    res = check_split_invariance(p, text, TOOLS, n=200)
    assert calls_of(res) == [("get_delivery_date", ARGS)] * 2
    s, deltas = run_stream(p, list(text), TOOLS)
    assert assemble(deltas) == (res["content"], calls_of(res))


def test_decode_skips_many_objects_in_linear_work(monkeypatch):
    """Structural, no timing: skipping N objects hands the (strict) skip scanner O(total length) text, never
    the rest of the output per object."""
    from mindie_like.tool_call import json_stream
    seen = [0]
    orig = json_stream.JsonScanner.scan

    def scan(self, buf, pos, final):
        if self.str_body is json_stream._STR_BODY_STRICT:
            seen[0] += len(buf) - pos
        return orig(self, buf, pos, final)

    monkeypatch.setattr(json_stream.JsonScanner, "scan", scan)
    text = '{"a": {"name": "get_delivery_date", "arguments": {}}} {} {"b": [1, 2]} ' * 2000 + CALL
    res = proc("qwen2_5").decode(text, TOOLS)
    assert calls_of(res) == [("get_delivery_date", ARGS)]
    assert seen[0] <= 4 * len(text), (seen[0], len(text))
