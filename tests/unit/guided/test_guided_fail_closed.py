"""Schemas the client asked to have enforced (response_format's, strict tools') fail closed: one llguidance cannot
compile or run is refused naming the part, never replaced by "any JSON". Tools without `strict` keep the logged
fallback."""
from __future__ import annotations

import logging

import pytest

from mindie_like.guided.schema import GuidedDecodingError

UNENFORCEABLE = [
    {"type": "string", "minLength": 1000000000000},          # llguidance: regex literal too large
    {"type": "string", "pattern": "a{100000}"},              # compiles, fails on the first token consumed
    {"type": "string", "pattern": "(?=a)b"},                 # look-around
    {"type": "object", "properties": {"a": {"type": "string", "format": "no-such-format"}}},
]


def _rf(schema):
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def _tool(schema, strict):
    return {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"v": schema}, "required": ["v"]}, **({"strict": True} if strict else {})}}


@pytest.mark.parametrize("schema", UNENFORCEABLE, ids=["minLength", "big-repeat", "lookaround", "format"])
def test_unenforceable_response_format_is_refused(qwen, schema):
    g, _ = qwen
    with pytest.raises(GuidedDecodingError) as e:      # at planning or at compiling
        g.build_mask_sync(g.plan("hermes", None, None, response_format=_rf(schema)))
    assert str(e.value).startswith("response_format.json_schema.schema: cannot be enforced: ")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("schema", UNENFORCEABLE[:2], ids=["minLength", "big-repeat"])
def test_unenforceable_strict_tool_is_refused_naming_it(qwen, schema):
    g, _ = qwen
    tools = [_tool({"type": "string"}, True), _tool(schema, True)]
    tools[1]["function"]["name"] = "g"
    with pytest.raises(GuidedDecodingError) as e:
        g.build_mask_sync(g.plan("hermes", tools, "required"))
    assert str(e.value).startswith("tools[1].function.parameters: cannot be enforced: ")


@pytest.mark.parametrize("schema", UNENFORCEABLE[:2], ids=["minLength", "big-repeat"])
def test_a_tool_without_strict_keeps_the_logged_fallback(qwen, caplog, schema):
    g, _ = qwen
    plan = g.plan("hermes", [_tool(schema, False)], "required")
    with caplog.at_level(logging.WARNING, logger="mindie_like.guided.core"):
        mask = g.build_mask_sync(plan)
    assert len(mask.allowed_token_ids()) > 0
    assert "cannot be enforced as given" in caplog.text


def test_an_enforceable_schema_still_compiles(qwen):
    g, tok = qwen
    plan = g.plan("hermes", None, None, response_format=_rf({"type": "string", "pattern": "a{3}"}))
    mask = g.build_mask_sync(plan)
    for t in tok.encode('"aaa"', add_special_tokens=False):
        assert mask.accept(t)
    assert mask.is_accepting()
