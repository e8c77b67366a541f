"""Every family's tool calls through ChatServing with the real tool-call processors and ChatOutputParser:
a scripted engine replays what a model of that family writes (markers as special tokens of a real tokenizer),
detokenizing with skip_special_tokens as the request says; the serving layer must keep the family's markers,
drop end-of-turn tokens, and report the same calls streaming and not."""
from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("mindie_like.reasoning", reason="needs the tool-call branch")
from mindie_like.engine.types import PromptLimits  # noqa: E402
from mindie_like.reasoning import ChatOutputParser  # noqa: E402
from mindie_like.serving import ChatServing, ServingOptions  # noqa: E402
from mindie_like.tool_call import ToolsCallProcessorManager  # noqa: E402
from tests.support.family_scripts import (CALLS, FAMILIES, MARKER_RE, MESSAGES, TOOLS,  # noqa: E402
                                          check_clean, deepseek_v3_calls, hermes_calls)
from tests.support.serving_fakes import FakeEngine, collect_sse, reassemble  # noqa: E402

MODEL = "m"
REPO = Path(__file__).resolve().parents[3]
def run(coro):
    return asyncio.run(coro)


def serving_for(hf_tok, alias, text, eos, reasoning=False):
    proc = ToolsCallProcessorManager.get_tool_call_processor(alias)(tokenizer=None)
    engine = FakeEngine(hf_tok, text, eos=eos)
    return ChatServing(engine, hf_tok, MODEL, tool_processor=proc, output_parser_cls=ChatOutputParser,
                       options=ServingOptions(enable_reasoning=reasoning)), engine, proc


def body(**kw):
    d = {"model": MODEL, "messages": MESSAGES, "tools": TOOLS}
    d.update(kw)
    return d


def check_calls(msg, expected, family):
    got = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in msg["tool_calls"]]
    assert got == expected
    for c in msg["tool_calls"]:
        pattern = {"mistral": r"[A-Za-z0-9]{9}", "kimi_k2": r"functions\.[a-z_]+:[0-9]+"}.get(family,
                                                                                          r"call_[A-Za-z0-9]{8}")
        assert re.fullmatch(pattern, c["id"]), c["id"]
        assert "\\u" not in c["function"]["arguments"]  # Unicode kept as is


@pytest.mark.parametrize("skip_special", [True, False])
@pytest.mark.parametrize("case", sorted(FAMILIES))
def test_family_calls_streaming_and_not(hf_tok, case, skip_special):
    fam = FAMILIES[case]
    serving, engine, proc = serving_for(hf_tok, fam.parser, fam.text, fam.eos, reasoning=fam.reasoning)
    d = body(skip_special_tokens=skip_special)
    resp = run(serving.create(d, "r1"))
    ch = resp["choices"][0]
    reasoning_markers = set()
    if fam.reasoning:          # the family's own reasoning markers (harmony's channels), else <think> / </think>
        reasoning_markers = set(getattr(proc, "reasoning_markers", ())) or {"<think>", "</think>"}
    assert engine.calls[0][1].keep_special_tokens == proc.special_markers | reasoning_markers
    assert ch["finish_reason"] == "tool_calls", (case, ch)
    check_calls(ch["message"], CALLS, proc.family)
    assert ch["message"]["content"] == fam.content
    assert not MARKER_RE.search(ch["message"]["content"])
    check_clean(ch["message"]["content"])

    events = run(collect_sse(serving.stream(dict(d, stream=True), "r2")))
    assert events[-1] == "[DONE]"
    msg = reassemble(events)
    assert msg["finish_reason"] == "tool_calls" and msg["role"] == "assistant"
    assert [c["function"] for c in msg["tool_calls"]] == [c["function"] for c in ch["message"]["tool_calls"]]
    assert msg["content"].strip() == fam.content
    check_calls(msg, CALLS, proc.family)


@pytest.mark.parametrize("case", ["qwen2_5", "deepseek_v3", "llama3_python_tag", "mistral"])
def test_tool_choice_none_turns_calls_into_content(hf_tok, case):
    fam = FAMILIES[case]
    serving, engine, _ = serving_for(hf_tok, fam.parser, fam.text, fam.eos)
    resp = run(serving.create(body(tool_choice="none"), "r1"))
    ch = resp["choices"][0]
    assert ch["message"]["tool_calls"] == [] and ch["finish_reason"] == "stop"
    assert "get_weather" in ch["message"]["content"]
    assert engine.calls[0][1].keep_special_tokens == frozenset()
    assert "get_weather" not in hf_tok.decode(engine.calls[0][0])  # no tools in the prompt
    msg = reassemble(run(collect_sse(serving.stream(body(tool_choice="none", stream=True), "r2"))))
    assert msg["tool_calls"] == [] and msg["content"] == ch["message"]["content"]


@pytest.mark.parametrize("alias,eos", [("qwen3", "<|im_end|>"), ("deepseek_v3", "<｜end▁of▁sentence｜>")])
def test_reasoning_then_tools(hf_tok, alias, eos):
    call = hermes_calls() if alias == "qwen3" else deepseek_v3_calls()
    text = "<think>\nThe user wants the weather; a <tool_call> here is only a thought.\n</think>\n\n" + call
    serving, _, proc = serving_for(hf_tok, alias, text, eos, reasoning=True)
    resp = run(serving.create(body(stream_options={"include_usage": True}), "r1"))
    msg = resp["choices"][0]["message"]
    assert "only a thought" in msg["reasoning_content"]
    check_calls(msg, CALLS, proc.family)
    assert resp["usage"]["completion_tokens_details"]["reasoning_tokens"] > 10
    events = run(collect_sse(serving.stream(body(stream=True, stream_options={"include_usage": True}), "r2")))
    smsg = reassemble(events)
    assert smsg["reasoning_content"] == msg["reasoning_content"]
    assert [c["function"] for c in smsg["tool_calls"]] == [c["function"] for c in msg["tool_calls"]]
    assert events[-2]["usage"] == resp["usage"]


def test_cut_off_inside_a_call(hf_tok):
    text, eos = FAMILIES["qwen2_5"].text, FAMILIES["qwen2_5"].eos
    serving, _, _ = serving_for(hf_tok, "qwen2_5", text, eos)
    n_tokens = len(hf_tok.encode(text.split("get_time")[0]))  # stop inside the second call
    resp = run(serving.create(body(max_tokens=n_tokens), "r1"))
    ch = resp["choices"][0]
    # the first call is complete: reported; the second is cut off: not reported
    assert [c["function"]["name"] for c in ch["message"]["tool_calls"]] == ["get_weather"]
    assert ch["finish_reason"] == "tool_calls"
    serving2, _, _ = serving_for(hf_tok, "qwen2_5", text, eos)
    n_first = len(hf_tok.encode(text.split('"Paris')[0]))  # inside the first call
    resp = run(serving2.create(body(max_tokens=n_first), "r2"))
    ch = resp["choices"][0]
    assert ch["message"]["tool_calls"] == [] and ch["finish_reason"] == "length"
    assert ch["message"]["content"].startswith("I will check both.")
    msg = reassemble(run(collect_sse(serving2.stream(body(max_tokens=n_first, stream=True), "r3"))))
    assert msg["finish_reason"] == "length"


def test_lenient_recovery_through_serving(hf_tok):
    text = 'Here you go:\n```json\n{"name": "get_weather", "arguments": {"city": "Paris 巴黎", "days": 3}}\n```'
    serving, _, proc = serving_for(hf_tok, "qwen2_5", text, "<|im_end|>")
    resp = run(serving.create(body(), "r1"))
    check_calls(resp["choices"][0]["message"], CALLS[:1], proc.family)
    msg = reassemble(run(collect_sse(serving.stream(body(stream=True), "r2"))))
    check_calls(msg, CALLS[:1], proc.family)
    serving.options.lenient_recovery = False
    resp = run(serving.create(body(), "r3"))
    assert resp["choices"][0]["message"]["tool_calls"] == []


def test_parallel_tool_calls_false_keeps_the_first_call(hf_tok):
    serving, _, proc = serving_for(hf_tok, "qwen2_5", FAMILIES["qwen2_5"].text, FAMILIES["qwen2_5"].eos)
    resp = run(serving.create(body(parallel_tool_calls=False), "r1"))
    check_calls(resp["choices"][0]["message"], CALLS[:1], proc.family)
    msg = reassemble(run(collect_sse(serving.stream(body(parallel_tool_calls=False, stream=True), "r2"))))
    assert [c["function"] for c in msg["tool_calls"]] == [c["function"] for c in resp["choices"][0]["message"]["tool_calls"]]


def test_from_model_builds_everything(hf_tok, tmp_path):
    (tmp_path / "generation_config.json").write_text('{"temperature": 0.6, "top_p": 0.9}')
    engine = FakeEngine(hf_tok, FAMILIES["qwen2_5"].text)
    serving = ChatServing.from_model(engine, hf_tok, MODEL, model_type="qwen2", tool_call_parser="",
                                     guided=None, model_dir=tmp_path, max_n=2, limits=PromptLimits(max_seq_len=4096))
    assert serving.tool_processor.family == "qwen2_5"  # the template has <tool_call>: Qwen2.5
    assert serving.options.default_sampling == {"temperature": 0.6, "top_p": 0.9} and serving.options.max_n == 2
    resp = run(serving.create(body(), "r1"))
    check_calls(resp["choices"][0]["message"], CALLS, "qwen2_5")
    assert engine.calls[0][1].temperature == 0.6
    serving = ChatServing.from_model(engine, hf_tok, MODEL, model_type="deepseek_v3", tool_call_parser="deepseek_v31",
                                     chat_template_path=str(REPO / "templates" / "tool_chat_template_deepseekv31.jinja"),
                                     guided=None)
    assert serving.tool_processor.family == "deepseek_v31" and "tool▁sep" in serving.template.source


SEED_TOOLS = [{"type": "function", "function": {
    "name": "get_delivery_date",
    "description": "Get the delivery date for a customer's order. Call this whenever you need to know the delivery "
                   "date, for example when a customer asks 'Where is my package'",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string",
                                                                 "description": "The customer's order ID."}},
                   "required": ["order_id"], "additionalProperties": False}}}]


def test_seed_request_and_follow_up(hf_tok):
    """The seed document's two requests (step 4 and step 5) through the Qwen2.5 tokenizer's own template."""
    answer = '<tool_call>\n{"name": "get_delivery_date", "arguments": {"order_id": "999888"}}\n</tool_call>'
    serving, engine, proc = serving_for(hf_tok, "qwen2_5", answer, "<|im_end|>")
    first = {"model": MODEL, "messages": [
        {"role": "system", "content": "You are a helpful customer support assistant. Use the supplied tools to "
                                      "assist the user."},
        {"role": "user", "content": "Hi, can you tell me the delivery date for my order?  my order number is 999888"}],
        "tools": SEED_TOOLS, "tool_choice": "auto", "stream": False}
    resp = run(serving.create(first, "s1"))
    ch = resp["choices"][0]
    assert ch["finish_reason"] == "tool_calls" and ch["message"]["content"] == ""
    call = ch["message"]["tool_calls"][0]
    assert call["function"] == {"name": "get_delivery_date", "arguments": '{"order_id": "999888"}'}
    assert "get_delivery_date" in hf_tok.decode(engine.calls[0][0])

    engine.script = "Your order 999888 will be delivered on 2024.09.10."
    follow = {"model": MODEL, "messages": [first["messages"][1], ch["message"],
                                           {"role": "tool", "content": "the delivery date is 2024.09.10.",
                                            "tool_call_id": call["id"]}],
              "stream": False, "max_tokens": 4096}
    resp = run(serving.create(follow, "s2"))
    assert resp["choices"][0]["message"]["content"] == engine.script
    assert resp["choices"][0]["finish_reason"] == "stop"
    prompt = hf_tok.decode(engine.calls[1][0])
    assert ('<tool_call>\n{"name": "get_delivery_date", "arguments": {"order_id": "999888"}}\n</tool_call>'
            in prompt)
    assert "<tool_response>\nthe delivery date is 2024.09.10.\n</tool_response>" in prompt
    assert "<tools>" not in prompt
