"""GuidedDecoding's API: planning rules, errors the serving layer turns into 422, schema fallbacks, the compile
cache, the async path, response_format, and the LogitsMask details the engine relies on."""
from __future__ import annotations

import asyncio
import json
import logging
import re
import threading

import numpy as np
import pytest
import torch

from guided_helpers import TOOLS, feed, named, parse, sample
from tests.support.tool_call_text import render
from mindie_like.engine.types import LogitsMask
from mindie_like.guided import FAMILIES, GuidedDecodingError

jsonschema = pytest.importorskip("jsonschema")

W1 = ("get_weather", {"city": "Paris", "days": 3})


def test_families_are_the_contract():
    assert set(FAMILIES) == {"passthrough", "chatglm2", "chatglm3", "glm4", "deepseek_v3", "deepseek_v31",
                             "deepseek_v32", "llama3", "qwen1_5_or_2", "qwen2_5", "qwen3", "qwen3_coder", "mistral",
                             "kimi_k2", "glm45", "glm47", "minimax_m2", "gpt_oss", "seed_oss", "pythonic",
                             "llama4_pythonic"}


def test_guided_and_parsing_sides_know_the_same_families():
    """Every family the parser registers has a guided format and the same aliases, and the other way round."""
    from mindie_like.guided.formats import FAMILY_ALIASES
    from mindie_like.tool_call import ToolsCallProcessorManager
    assert set(FAMILIES) == set(ToolsCallProcessorManager.families())
    for alias in ToolsCallProcessorManager.names():
        family = ToolsCallProcessorManager.get_tool_call_processor(alias).spec.family
        assert FAMILY_ALIASES.get(alias, alias) == family, alias
    assert set(FAMILY_ALIASES) <= set(ToolsCallProcessorManager.names())


@pytest.mark.parametrize("choice", ["auto", "none", None])
def test_nothing_to_enforce(qwen, choice):
    g, _ = qwen
    assert g.plan("qwen2_5", TOOLS, choice) is None
    assert g.plan("qwen2_5", None, choice, response_format={"type": "text"}) is None


@pytest.mark.parametrize("bad", [
    dict(tools=TOOLS, tool_choice=named("nope")),
    dict(tools=None, tool_choice="required"),
    dict(tools=[], tool_choice=named("get_weather")),
    dict(tools=TOOLS, tool_choice="sometimes"),
    dict(tools=TOOLS, tool_choice={"type": "function", "function": {}}),
    dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}],
         tool_choice="required"),
    dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string", "maxLength": -1}}}}}], tool_choice="required"),
    dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "required": "a"}}}], tool_choice="required"),
    dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}],
         tool_choice="required"),
    dict(tools=[TOOLS[0], TOOLS[0]], tool_choice="required"),
    dict(tools=None, tool_choice="none", response_format={"type": "xml"}),
    dict(tools=None, tool_choice="none", response_format={"type": "json_schema",
                                                         "json_schema": {"schema": {"enum": []}}}),
])
def test_invalid_requests_raise_guided_decoding_error(qwen, bad):
    g, _ = qwen
    with pytest.raises(GuidedDecodingError) as e:
        g.plan("qwen2_5", **bad)
    # the message starts with the request parameter at fault (ChatServing answers it as a 422 as is)
    assert re.match(r"(tool_choice|tools\[\d+\]\.function\.\w+|response_format\.\w+)[.:\w]*: \S", str(e.value)), \
        str(e.value)


def test_unsupported_schema_falls_back_and_never_crashes(qwen, caplog):
    g, tok = qwen
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"code": {"type": "string", "pattern": "(?<=a)b", "maxLength": 4}},
        "required": ["code"]}}}]
    plan = g.plan("qwen2_5", tools, "required")
    with caplog.at_level(logging.WARNING, logger="mindie_like.guided"):
        mask = g.build_mask_sync(plan)
    assert any("schema" in r.message for r in caplog.records)
    assert isinstance(mask, LogitsMask)
    ok, mask, _ = feed(g, render("qwen2_5", [("f", {"code": "xyz"})]), tok, plan)
    assert ok and mask.is_accepting()
    # a second request with the same tools reuses the compiled fallback
    hits = g.cache_info()["hits"]
    g.build_mask_sync(g.plan("qwen2_5", tools, "required"))
    assert g.cache_info()["hits"] == hits + 1


def test_compiled_grammars_are_cached(qwen):
    g, _ = qwen
    tools = [{"type": "function", "function": {"name": "cache_probe", "parameters": {
        "type": "object", "properties": {"x": {"type": "integer"}}}}}]
    before = g.cache_info()
    m1 = g.build_mask_sync(g.plan("qwen2_5", tools, "required"))
    mid = g.cache_info()
    m2 = g.build_mask_sync(g.plan("qwen2_5", tools, "required"))
    after = g.cache_info()
    assert mid["misses"] == before["misses"] + 1
    assert after["hits"] == mid["hits"] + 1 and after["misses"] == mid["misses"]
    assert m1 is not m2 and m1._m is not m2._m                # a fresh matcher per request
    # the two masks advance independently
    tid = g.tokenizer.convert_tokens_to_ids("<tool_call>")
    assert m1.accept(tid) and m1.num_tokens == 1 and m2.num_tokens == 0


def test_cache_is_lru(qwen):
    from mindie_like.guided import GuidedDecoding
    _, tok = qwen
    g = GuidedDecoding(tok, cache_size=2, ll_tokenizer=qwen[0].ll_tokenizer)
    plans = [g.plan("qwen2_5", TOOLS, named(n)) for n in ("get_weather", "set_alarm", "search")]
    for p in plans:
        g.build_mask_sync(p)
    assert g.cache_info()["size"] == 2
    g.build_mask_sync(plans[2])
    assert g.cache_info()["hits"] == 1
    g.build_mask_sync(plans[0])                              # evicted: compiled again
    assert g.cache_info()["misses"] == 4


def test_build_mask_compiles_off_the_event_loop(qwen):
    g, _ = qwen
    seen = []
    real = g._new_matcher

    def spy(grammar):
        seen.append(threading.current_thread().name)
        return real(grammar)

    tools = [{"type": "function", "function": {"name": "async_probe", "parameters": {"type": "object"}}}]
    g._new_matcher = spy
    try:
        async def go():
            loop_thread = threading.current_thread().name
            masks = await asyncio.gather(*(g.build_mask(g.plan("qwen2_5", tools, "required")) for _ in range(3)))
            return loop_thread, masks
        loop_thread, masks = asyncio.run(go())
    finally:
        del g._new_matcher
    assert seen and all(t != loop_thread and t.startswith("guided-compile") for t in seen)
    assert len(seen) == 1                                    # three concurrent requests, one compile
    assert len({id(m) for m in masks}) == 3


def test_vocab_padding_and_dtypes(qwen):
    g, tok = qwen
    plan = g.plan("qwen2_5", TOOLS, "required")
    tid = tok.convert_tokens_to_ids("<tool_call>")
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        mask = g.build_mask_sync(plan)
        logits = torch.zeros(g.vocab_size + 128, dtype=dtype)
        mask.apply(logits)
        assert torch.isneginf(logits[g.vocab_size:]).all()
        assert torch.isfinite(logits).sum() == 1 and logits[tid] == 0
    # a non-contiguous row (a column of a batch) is masked in place too
    mask = g.build_mask_sync(plan)
    batch = torch.zeros(g.vocab_size + 64, 2)
    mask.apply(batch[:, 0])
    assert torch.isfinite(batch[:, 0]).sum() == 1 and torch.isfinite(batch[:, 1]).all()


def test_eos_and_errors(qwen):
    g, tok = qwen
    plan = g.plan("qwen2_5", TOOLS, "required", parallel_tool_calls=True)
    ok, mask, _ = feed(g, render("qwen2_5", [W1]), tok, plan)
    assert ok and mask.is_accepting() and not mask.is_finished()   # another call could follow
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert mask.accept(im_end) and mask.is_finished()
    # a token the grammar refuses: accept() says so, the mask finishes, apply never leaves an all -inf row
    mask = g.build_mask_sync(plan)
    assert not mask.accept(tok.encode("hello", add_special_tokens=False)[0])
    assert mask.error and mask.is_finished()
    logits = torch.zeros(g.vocab_size)
    mask.apply(logits)
    assert set(torch.nonzero(torch.isfinite(logits)).flatten().tolist()) == set(g.eos_token_ids)


def test_rollback(qwen):
    g, tok = qwen
    plan = g.plan("qwen2_5", TOOLS, "required")
    mask = g.build_mask_sync(plan)
    ids = tok.encode(render("qwen2_5", [W1]), add_special_tokens=False)
    for t in ids[:5]:
        assert mask.accept(t)
    assert mask.rollback(3) and mask.num_tokens == 2
    for t in ids[2:]:
        assert mask.accept(t)
    assert mask.is_accepting()


def test_json_object_response_format(qwen):
    g, tok = qwen
    plan = g.plan("qwen2_5", None, "none", response_format={"type": "json_object"})
    assert plan.output_kind == "json" and plan.function_name is None
    ok, mask, _ = feed(g, '{"answer": [1, 2, {"x": null}], "ok": true}', tok, plan)
    assert ok and mask.is_finished()
    ok, _, _ = feed(g, "[1, 2]", tok, plan)
    assert not ok
    ok, _, _ = feed(g, '{\r\n"a": 1}', tok, plan)             # no free whitespace
    assert not ok


SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 6},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "color": {"enum": ["red", "green"]}}, "required": ["name", "age"]}


@pytest.mark.parametrize("seed", range(5))
def test_json_schema_response_format_random_logits(qwen, seed):
    g, tok = qwen
    plan = g.plan("llama3", None, "auto",
                  response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}})
    assert plan.output_kind == "json"
    ids, finished = sample(g, plan, seed)
    assert finished
    obj = json.loads(tok.decode(ids))
    jsonschema.validate(obj, SCHEMA)
    assert set(obj) <= set(SCHEMA["properties"])             # strict: no invented keys


@pytest.mark.parametrize("family", ["qwen2_5", "llama3", "glm4", "mistral", "deepseek_v31"])
def test_auto_with_response_format_allows_calls_or_json(gd, family):
    g, tok = gd(family)
    plan = g.plan(family, TOOLS, "auto", response_format={"type": "json_object"})
    assert plan.output_kind == "family" and plan.mode == "auto_json"
    for text in (render(family, [W1]), '{"reply": "no tool needed"}', '{"name": "x"}'):
        ok, mask, _ = feed(g, text, tok, plan)
        assert ok and mask.is_accepting(), (text, mask.error)
    ok, _, _ = feed(g, "plain text", tok, plan)
    assert not ok


def test_tools_without_parameters_and_refs(qwen):
    g, tok = qwen
    tools = [
        {"type": "function", "function": {"name": "ping"}},
        {"type": "function", "function": {"name": "order", "parameters": {
            "$defs": {"Item": {"type": "object", "properties": {"sku": {"type": "string", "maxLength": 8},
                                                                 "qty": {"type": "integer", "minimum": 1}},
                               "required": ["sku", "qty"]}},
            "type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"}},
                                             "note": {"type": "string"}},
            "required": ["items"]}}},
    ]
    order = ("order", {"items": [{"sku": "A1", "qty": 2}], "note": "fast"})
    for family in ("qwen2_5", "qwen3_coder", "glm4"):
        plan = g.plan(family, tools, "required")
        for call in (("ping", {}), ("ping", {"anything": [1]}), order):
            ok, mask, _ = feed(g, render(family, [call]), tok, plan)
            assert ok and mask.is_accepting(), (family, call, mask.error)
        ok, _, _ = feed(g, render(family, [("order", {"items": [{"sku": "A1", "qty": 0}]})]), tok, plan)
        assert not ok, family                                 # $ref'd minimum enforced


def test_reasoning_block_before_the_calls(qwen):
    g, tok = qwen
    plan = g.plan("qwen3", TOOLS, "required", reasoning=True)
    text = "<think>\nThe user wants the weather.\n</think>\n\n" + render("qwen3", [W1])
    ok, mask, _ = feed(g, text, tok, plan)
    assert ok and mask.is_accepting()
    ok, _, _ = feed(g, "<think>\nhmm\n</think>\n\nSure!", tok, plan)
    assert not ok


def test_pydantic_like_inputs_and_aliases(qwen):
    g, _ = qwen

    class Dumpable:
        def __init__(self, d):
            self.d = d

        def model_dump(self, **_):
            return self.d

    plan = g.plan("hermes", [Dumpable(t) for t in TOOLS], Dumpable(named("search")), parallel_tool_calls=False)
    assert plan.family == "qwen3" and plan.function_name == "search"
    assert g.plan("some_unknown_family", TOOLS, "required").output_kind == "arguments_json"



def test_mistral_args_variant_when_the_tokenizer_has_it(newer):
    g, tok = newer
    plan = g.plan("mistral", TOOLS, "required")
    assert plan.family == "mistral"
    s1 = ("search", {"query": "llm"})
    text = f"[TOOL_CALLS]get_weather[ARGS]{json.dumps(W1[1])}[TOOL_CALLS]search[ARGS]{json.dumps(s1[1])}"
    ok, mask, _ = feed(g, text, tok, plan)
    assert ok and mask.is_accepting(), mask.error
    ok, _, _ = feed(g, render("mistral", [W1]), tok, plan)     # the older array format is not this model's
    assert not ok
    ok, mask, _ = feed(g, text, tok, g.plan("mistral", TOOLS, "required", parallel_tool_calls=False))
    assert not ok


def test_reasoning_with_special_think_tokens(newer):
    g, tok = newer
    plan = g.plan("qwen3", TOOLS, named("get_weather"), reasoning=True)
    for prefix in ("<think>\nweather, Paris\n</think>\n\n", "weather, Paris\n</think>\n\n", "</think>"):
        ok, mask, _ = feed(g, prefix + render("qwen3", [W1]), tok, plan)
        assert ok and mask.is_accepting(), (prefix, mask.error)
    ok, _, _ = feed(g, "<think>\nno\n</think>\n\nSure!", tok, plan)
    assert not ok


def test_inference_mode_batch_rows(qwen):
    g, tok = qwen
    mask = g.build_mask_sync(g.plan("qwen2_5", TOOLS, "required"))
    with torch.inference_mode():
        batch = torch.zeros(2, g.vocab_size + 64)
        mask.apply(batch[1])
    assert torch.isfinite(batch[1]).sum() == 1 and torch.isfinite(batch[0]).all()


@pytest.mark.parametrize("seed", range(4))
def test_mistral_args_variant_random_logits(newer, seed):
    g, tok = newer
    plan = g.plan("mistral", TOOLS, "required", parallel_tool_calls=seed % 2 == 0)
    ids, finished = sample(g, plan, seed)
    assert finished
    text = tok.decode(ids, skip_special_tokens=False)
    parts = text.split("[TOOL_CALLS]")
    assert parts[0] == "" and len(parts) >= 2
    if seed % 2:
        assert len(parts) == 2
    for p in parts[1:]:
        name, args = p.split("[ARGS]")
        jsonschema.validate(json.loads(args), next(t["function"]["parameters"] for t in TOOLS
                                                   if t["function"]["name"] == name))


class _PythonTokenizer:
    """Looks like a remote-code ("slow") tokenizer: not a PreTrainedTokenizerFast, same pieces and encode."""

    def __init__(self, fast):
        self._t = fast

    def __len__(self):
        return len(self._t)

    def __getattr__(self, k):
        return getattr(self._t, k)


def test_slow_tokenizers_get_the_same_token_table_and_masks(other):
    from mindie_like.guided import GuidedDecoding
    g_fast, fast = other
    g_slow = GuidedDecoding(_PythonTokenizer(fast))
    n = len(fast)
    assert [g_slow.ll_tokenizer.decode_bytes([i]) for i in range(n)] == \
        [g_fast.ll_tokenizer.decode_bytes([i]) for i in range(n)]
    assert g_slow.eos_token_ids == g_fast.eos_token_ids
    for family in ("deepseek_v31", "llama3", "chatglm3"):
        m1 = g_fast.build_mask_sync(g_fast.plan(family, TOOLS, named("search")))
        m2 = g_slow.build_mask_sync(g_slow.plan(family, TOOLS, named("search")))
        rng = np.random.default_rng(0)
        for _ in range(120):
            a1 = m1.allowed_token_ids()
            assert np.array_equal(a1, m2.allowed_token_ids())
            t = int(rng.choice(a1))
            assert m1.accept(t) and m2.accept(t)
            if m1.is_finished() or t in g_fast.eos_token_ids:
                break


def test_special_tokens_inside_longer_literals(newer):
    g, tok = newer
    dsml = tok.convert_tokens_to_ids("｜DSML｜")
    assert g.split_specials("<｜DSML｜invoke") == ["<", dsml, "invoke"]
    assert g.marker("a<|python_tag|>b") == f'"a" <[{tok.convert_tokens_to_ids("<|python_tag|>")}]> "b"'
    plan = g.plan("deepseek_v32", TOOLS, "required")
    assert f"<[{dsml}]>" in plan.grammar
    text = render("deepseek_v32", [W1, ("search", {"query": "x"})])
    assert dsml in tok.encode(text, add_special_tokens=False)
    ok, mask, _ = feed(g, text, tok, plan)
    assert ok and mask.is_accepting(), mask.error
    for seed in range(3):
        ids, finished = sample(g, plan, seed)
        assert finished
        for name, args in parse("deepseek_v32", tok.decode(ids, skip_special_tokens=False)):
            jsonschema.validate(args, next(t["function"]["parameters"] for t in TOOLS
                                           if t["function"]["name"] == name))
