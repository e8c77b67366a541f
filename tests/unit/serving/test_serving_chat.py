"""ChatServing through a scripted fake engine and a real tokenizer (no HTTP, no model)."""
from __future__ import annotations

import asyncio
import json

import pytest

from mindie_like.engine.types import EngineError, EngineOverloaded, PromptLimits
from mindie_like.protocol import ChatCompletionChunk, ChatCompletionResponse, ValidationFailure, parse_chat_request
from mindie_like.serving import ChatServing, ServingOptions
from tests.support.serving_fakes import (FakeChatOutputParser, FakeEngine, FakeGuided, FakePlan, FakeQwenProcessor, collect_sse,
                           reassemble)

MODEL = "qwen-test"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}},
         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]
CALL_TEXT = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>'


def run(coro):
    return asyncio.run(coro)


def body(**kw):
    d = {"model": MODEL, "messages": [{"role": "user", "content": "What is the weather in Beijing?"}]}
    d.update(kw)
    return d


def make(hf_tok, script=CALL_TEXT, processor=FakeQwenProcessor(), options=None, guided=None, **engine_kw):
    engine = FakeEngine(hf_tok, script, **engine_kw)
    serving = ChatServing(engine, hf_tok, MODEL, tool_processor=processor, guided=guided,
                          options=options or ServingOptions(), output_parser_cls=FakeChatOutputParser)
    return serving, engine


def stream_events(serving, d, rid="r1"):
    return run(collect_sse(serving.stream(d, rid)))


# ------------------------------------------------------------------------------------ plain chat

def test_plain_chat_non_streaming(hf_tok):
    serving, engine = make(hf_tok, "Hello there!")
    resp = run(serving.create(body(), "r1"))
    ChatCompletionResponse.model_validate(resp)
    assert resp["object"] == "chat.completion" and resp["id"] == "chatcmpl-r1" and resp["model"] == MODEL
    ch = resp["choices"][0]
    assert ch["message"] == {"role": "assistant", "content": "Hello there!", "tool_calls": []}
    assert ch["finish_reason"] == "stop" and ch["logprobs"] is None
    prompt_ids = engine.calls[0][0]
    assert resp["usage"]["prompt_tokens"] == len(prompt_ids)
    assert resp["usage"]["completion_tokens"] == len(hf_tok.encode("Hello there!")) + 1  # + EOS
    assert resp["usage"]["total_tokens"] == resp["usage"]["prompt_tokens"] + resp["usage"]["completion_tokens"]
    assert resp["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    # the prompt is the tokenizer's template, rendered once, no doubled BOS
    text = hf_tok.decode(prompt_ids)
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    assert "prefill_time" not in resp


def test_plain_chat_streaming(hf_tok):
    serving, _ = make(hf_tok, "Hello there, friend!")
    events = stream_events(serving, body(stream=True))
    assert events[-1] == "[DONE]"
    for ev in events[:-1]:
        ChatCompletionChunk.model_validate(ev)
        assert ev["object"] == "chat.completion.chunk" and ev["id"] == "chatcmpl-r1"
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    msg = reassemble(events)
    assert msg["content"] == "Hello there, friend!" and msg["finish_reason"] == "stop"
    assert len([e for e in events[:-1] if e["choices"][0]["delta"].get("content")]) > 2  # really streamed
    assert "usage" not in events[-2]


def test_end_of_turn_never_reaches_content(hf_tok):
    serving, _ = make(hf_tok, "Hi!")
    resp = run(serving.create(body(skip_special_tokens=False), "r1"))
    assert resp["choices"][0]["message"]["content"] == "Hi!"
    events = stream_events(serving, body(stream=True, skip_special_tokens=False))
    assert reassemble(events)["content"] == "Hi!"


def test_length_finish_and_max_tokens(hf_tok):
    serving, engine = make(hf_tok, "one two three four five six seven")
    resp = run(serving.create(body(max_tokens=3), "r1"))
    assert resp["choices"][0]["finish_reason"] == "length"
    assert resp["usage"]["completion_tokens"] == 3
    assert engine.calls[0][1].max_tokens == 3
    resp = run(serving.create(body(max_completion_tokens=2, max_tokens=5), "r2"))
    assert engine.calls[-1][1].max_tokens == 2


def test_sampling_params_mapping(hf_tok):
    opts = ServingOptions(default_sampling={"temperature": 0.7, "top_p": 0.8, "top_k": 20})
    serving, engine = make(hf_tok, "ok", options=opts)
    run(serving.create(body(top_p=0.5, seed=7, stop=["x"], stop_token_ids=[5], ignore_eos=False,
                            presence_penalty=0.5, frequency_penalty=-0.5, repetition_penalty=1.1, min_p=0.1,
                            include_stop_str_in_output=True, skip_special_tokens=False), "r1"))
    sp = engine.calls[0][1]
    assert (sp.temperature, sp.top_p, sp.top_k, sp.seed) == (0.7, 0.5, 20, 7)
    assert sp.stop == ["x"] and sp.stop_token_ids == [5] and sp.include_stop_str_in_output
    assert (sp.presence_penalty, sp.frequency_penalty, sp.repetition_penalty, sp.min_p) == (0.5, -0.5, 1.1, 0.1)
    assert sp.skip_special_tokens is False and sp.logprobs is None and sp.logits_mask is None
    run(serving.create(body(temperature=0), "r2"))
    assert engine.calls[-1][1].temperature == 0.0


# ------------------------------------------------------------------------------------ tools

def test_tool_call_non_streaming(hf_tok):
    serving, engine = make(hf_tok)
    resp = run(serving.create(body(tools=TOOLS), "r1"))
    ChatCompletionResponse.model_validate(resp)
    ch = resp["choices"][0]
    assert ch["finish_reason"] == "tool_calls"
    [call] = ch["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "北京"}
    assert ch["message"]["content"] == "Let me check."
    prompt = hf_tok.decode(engine.calls[0][0])
    assert "get_weather" in prompt and "<tools>" in prompt


def test_tool_call_streaming_equals_non_streaming(hf_tok):
    serving, _ = make(hf_tok)
    resp = run(serving.create(body(tools=TOOLS), "r1"))
    events = stream_events(serving, body(tools=TOOLS, stream=True))
    msg = reassemble(events)
    assert msg["finish_reason"] == "tool_calls"
    want = resp["choices"][0]["message"]
    assert [c["function"] for c in msg["tool_calls"]] == [c["function"] for c in want["tool_calls"]]
    assert msg["content"] == want["content"]
    first = next(tc for e in events[:-1] for tc in e["choices"][0]["delta"].get("tool_calls") or [])
    assert set(first) == {"index", "id", "type", "function"} and first["function"]["arguments"] == ""


def test_only_tool_call_content_is_empty_string(hf_tok):
    serving, _ = make(hf_tok, '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')
    resp = run(serving.create(body(tools=TOOLS), "r1"))
    msg = resp["choices"][0]["message"]
    assert msg["content"] == "" and msg["tool_calls"][0]["function"] == {"name": "get_time", "arguments": "{}"}


def test_tool_choice_none_gives_plain_content(hf_tok):
    serving, engine = make(hf_tok)
    resp = run(serving.create(body(tools=TOOLS, tool_choice="none"), "r1"))
    ch = resp["choices"][0]
    assert ch["message"]["tool_calls"] == [] and ch["finish_reason"] == "stop"
    assert ch["message"]["content"] == CALL_TEXT
    prompt = hf_tok.decode(engine.calls[0][0])
    assert "<tools>" not in prompt and "get_weather" not in prompt
    events = stream_events(serving, body(tools=TOOLS, tool_choice="none", stream=True))
    msg = reassemble(events)
    assert msg["tool_calls"] == [] and msg["content"] == CALL_TEXT and msg["finish_reason"] == "stop"


def test_named_tool_choice_renders_only_that_tool(hf_tok):
    serving, engine = make(hf_tok)
    run(serving.create(body(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}}), "r"))
    prompt = hf_tok.decode(engine.calls[0][0])
    assert "get_time" in prompt and "get_weather" not in prompt


def test_special_markers_kept_for_tool_parsing(hf_tok):
    class Proc:
        family = "deepseek_v31"
        special_markers = frozenset({"<｜tool▁calls▁begin｜>", "<｜tool▁sep｜>"})

    serving, engine = make(hf_tok, "x", processor=Proc())
    run(serving.create(body(tools=TOOLS), "r1"))
    assert engine.calls[0][1].keep_special_tokens == Proc.special_markers
    run(serving.create(body(tools=TOOLS, tool_choice="none"), "r2"))
    assert engine.calls[1][1].keep_special_tokens == frozenset()


def test_tools_with_n_stop_seed_logprobs(hf_tok):
    script = CALL_TEXT + "\nEND and more text"
    serving, engine = make(hf_tok, script)
    d = body(tools=TOOLS, n=3, stop=["END"], seed=42, logprobs=True, top_logprobs=2)
    resp = run(serving.create(d, "r1"))
    assert [c["index"] for c in resp["choices"]] == [0, 1, 2]
    assert [c[2] for c in engine.calls] == ["r1-0", "r1-1", "r1-2"]
    assert [c[1].seed for c in engine.calls] == [42, 43, 44]
    for ch in resp["choices"]:
        assert ch["finish_reason"] == "tool_calls"
        assert json.loads(ch["message"]["tool_calls"][0]["function"]["arguments"]) == {"city": "北京"}
        assert "END" not in ch["message"]["content"]
        lps = ch["logprobs"]["content"]
        assert lps and all(len(e["top_logprobs"]) == 2 and e["logprob"] == -0.25 for e in lps)
        assert "".join(e["token"] for e in lps).startswith("Let me check.")
        assert all(e["bytes"] == list(e["token"].encode()) for e in lps)
    n_out = sum(len(hf_tok.encode(script.split("END")[0] + "END")) for _ in range(3))
    assert resp["usage"]["completion_tokens"] == n_out
    # ids are unique across choices
    ids = [ch["message"]["tool_calls"][0]["id"] for ch in resp["choices"]]
    assert len(set(ids)) == 3

    events = stream_events(serving, dict(d, stream=True))
    for i in range(3):
        msg = reassemble(events, i)
        assert msg["finish_reason"] == "tool_calls" and msg["role"] == "assistant"
        assert json.loads(msg["tool_calls"][0]["function"]["arguments"]) == {"city": "北京"}
    lp_tokens = [e for ev in events[:-1] for ch in ev["choices"] if ch["index"] == 1 and ch["logprobs"]
                 for e in ch["logprobs"]["content"]]
    assert "".join(e["token"] for e in lp_tokens).startswith("Let me check.")


# ------------------------------------------------------------------------------------ reasoning

THINK = "<think>\nThe user wants weather. I will call the tool.\n</think>\n\n" + CALL_TEXT


def test_reasoning_and_tools_non_streaming(hf_tok):
    serving, _ = make(hf_tok, THINK, options=ServingOptions(enable_reasoning=True))
    resp = run(serving.create(body(tools=TOOLS), "r1"))
    msg = resp["choices"][0]["message"]
    assert msg["reasoning_content"].strip() == "The user wants weather. I will call the tool."
    assert msg["tool_calls"][0]["function"]["name"] == "get_weather"
    assert resp["choices"][0]["finish_reason"] == "tool_calls"
    reasoning_part = THINK.split("</think>")[0]
    n_reason = len(hf_tok.encode(reasoning_part))
    got = resp["usage"]["completion_tokens_details"]["reasoning_tokens"]
    assert n_reason <= got <= n_reason + 1  # the </think> token itself is reasoning markup


def test_reasoning_streaming_matches(hf_tok):
    serving, _ = make(hf_tok, THINK, options=ServingOptions(enable_reasoning=True))
    resp = run(serving.create(body(tools=TOOLS, stream_options={"include_usage": True}), "r1"))
    events = stream_events(serving, body(tools=TOOLS, stream=True, stream_options={"include_usage": True}))
    msg = reassemble(events)
    want = resp["choices"][0]["message"]
    assert msg["reasoning_content"] == want["reasoning_content"]
    assert [c["function"] for c in msg["tool_calls"]] == [c["function"] for c in want["tool_calls"]]
    usage_ev = events[-2]
    assert usage_ev["choices"] == [] and usage_ev["usage"] == resp["usage"]


def test_reasoning_switches(hf_tok):
    serving, _ = make(hf_tok, THINK, options=ServingOptions(enable_reasoning=True))
    # enable_thinking false beats the model default: no reasoning split, text stays content
    resp = run(serving.create(body(chat_template_kwargs={"enable_thinking": False}), "r1"))
    assert "reasoning_content" not in resp["choices"][0]["message"]
    assert resp["choices"][0]["message"]["content"].startswith("<think>")
    # separate_reasoning turns it on for a model without enable_reasoning
    serving2, _ = make(hf_tok, THINK)
    resp = run(serving2.create(body(separate_reasoning=True), "r2"))
    assert resp["choices"][0]["message"]["reasoning_content"].strip().startswith("The user wants")
    plain = parse_chat_request(body())
    assert serving2.reasoning_enabled(plain) is False and serving.reasoning_enabled(plain) is True
    assert serving.reasoning_enabled(parse_chat_request(body(separate_reasoning=False))) is False
    assert serving2.reasoning_enabled(parse_chat_request(body(chat_template_kwargs={"enable_thinking": True})))


# ------------------------------------------------------------------------------------ usage, benchmark

def test_include_usage_and_cached_tokens(hf_tok):
    serving, _ = make(hf_tok, "Hello!", cached_tokens=7)
    events = stream_events(serving, body(stream=True, stream_options={"include_usage": True}))
    assert events[-1] == "[DONE]"
    u = events[-2]["usage"]
    assert events[-2]["choices"] == []
    assert u["prompt_tokens_details"]["cached_tokens"] == 7
    assert u["completion_tokens"] == len(hf_tok.encode("Hello!")) + 1
    assert u["completion_tokens_details"]["reasoning_tokens"] == 0


def test_benchmark_fields(hf_tok, monkeypatch):
    serving, _ = make(hf_tok, "Hello there!")
    monkeypatch.setenv("MINDIE_LLM_BENCHMARK_ENABLE", "1")
    resp = run(serving.create(body(), "r1"))
    assert resp["prefill_time"] == 12
    assert resp["decode_time_arr"] == [3] * (resp["usage"]["completion_tokens"] - 1)
    events = stream_events(serving, body(stream=True))
    last = [e for e in events[:-1] if e["choices"] and e["choices"][0]["finish_reason"]][-1]
    assert last["prefill_time"] == 12 and len(last["decode_time_arr"]) == resp["usage"]["completion_tokens"] - 1
    monkeypatch.setenv("MINDIE_LLM_BENCHMARK_ENABLE", "0")
    assert "prefill_time" not in run(serving.create(body(), "r2"))


# ------------------------------------------------------------------------------------ errors

def test_model_not_found(hf_tok):
    serving, _ = make(hf_tok)
    with pytest.raises(ValidationFailure) as e:
        run(serving.create(body(model="gpt-4"), "r1"))
    assert e.value.status == 422 and "Model not found" in e.value.message
    assert e.value.to_body() == {"error": e.value.message, "error_type": "Input Validation Error"}


def test_validation_raised_before_streaming(hf_tok):
    serving, engine = make(hf_tok)

    async def first():
        agen = serving.stream(body(temperature=-1, stream=True), "r1")
        return await agen.__anext__()

    with pytest.raises(ValidationFailure) as e:
        run(first())
    assert e.value.status == 422 and e.value.message == "temperature: -1 is not in [0, inf)"
    assert engine.calls == []


def test_engine_refusals_map_to_status(hf_tok):
    for exc, status, etype in [(EngineOverloaded("queue full"), 503, "Service Unavailable"),
                               (EngineError("bad request"), 424, "Generation Error")]:
        serving, _ = make(hf_tok, refuse=exc)
        with pytest.raises(ValidationFailure) as e:
            run(serving.create(body(), "r1"))
        assert (e.value.status, e.value.error_type) == (status, etype)

        async def first():
            return await serving.stream(body(stream=True), "r1").__anext__()

        with pytest.raises(ValidationFailure) as e:
            run(first())
        assert (e.value.status, e.value.error_type) == (status, etype)


def test_error_after_stream_started(hf_tok):
    serving, engine = make(hf_tok, "a b c d e f g h", fail_after=3)
    events = stream_events(serving, body(stream=True))
    assert events[-1] == "[DONE]"
    assert events[-2] == {"error": "device fell over", "error_type": "Generation Error"}
    assert reassemble(events[:-2])["content"]  # some text went out before
    with pytest.raises(ValidationFailure) as e:
        run(serving.create(body(), "r2"))
    assert e.value.status == 424
    # a finish_reason "error" output is the same thing
    serving, _ = make(hf_tok, "a b c d e f g h", finish_error_after=2)
    events = stream_events(serving, body(stream=True))
    assert events[-2] == {"error": "step failed", "error_type": "Generation Error"}


def test_prompt_too_long(hf_tok):
    serving, _ = make(hf_tok, options=ServingOptions(limits=PromptLimits(max_input_len=10)))
    with pytest.raises(ValidationFailure) as e:
        run(serving.create(body(), "r1"))
    assert e.value.status == 422 and "maxInputTokenLen" in e.value.message
    serving, engine = make(hf_tok, "ok",
                           options=ServingOptions(limits=PromptLimits(max_input_len=10, truncation=-1)))
    run(serving.create(body(), "r1"))
    assert len(engine.calls[0][0]) == 10
    serving, engine = make(hf_tok, "ok",
                           options=ServingOptions(limits=PromptLimits(max_seq_len=100, max_iter_times=50)))
    run(serving.create(body(max_tokens=1000), "r1"))
    assert engine.calls[0][1].max_tokens == min(50, 100 - len(engine.calls[0][0]))


def test_stop_token_ids_checked_against_vocab(hf_tok):
    serving, _ = make(hf_tok)
    with pytest.raises(ValidationFailure) as e:
        run(serving.create(body(stop_token_ids=[10**9]), "r1"))
    assert e.value.message.startswith("stop_token_ids[0]: 1000000000 is not in [0, ")


def test_template_error_is_422(hf_tok):
    from mindie_like.chat import ChatTemplate
    engine = FakeEngine(hf_tok, "x")
    tpl = ChatTemplate("{{ raise_exception('only user messages please') }}")
    serving = ChatServing(engine, hf_tok, MODEL, chat_template=tpl, output_parser_cls=FakeChatOutputParser)
    with pytest.raises(ValidationFailure) as e:
        run(serving.create(body(), "r1"))
    assert e.value.status == 422 and "only user messages please" in e.value.message


# ------------------------------------------------------------------------------------ cancellation

def test_client_disconnect_aborts(hf_tok):
    serving, engine = make(hf_tok, "word " * 200, step_delay=0.001)

    async def go():
        agen = serving.stream(body(stream=True, n=2), "r1")
        got = [await agen.__anext__() for _ in range(4)]
        await agen.aclose()  # what the handler does when the client goes away
        assert sorted(engine.aborted) == ["r1-0", "r1-1"]  # at once, not when the generator is collected
        return got

    run(go())
    assert sorted(engine.aborted) == ["r1-0", "r1-1"]

    async def cancel_stream():
        async def consume():
            async for _ in serving.stream(body(stream=True), "r3"):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert "r3" in engine.aborted

    run(cancel_stream())

    async def cancel():
        task = asyncio.create_task(serving.create(body(), "r2"))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(cancel())
    assert "r2" in engine.aborted


def test_finished_requests_are_not_aborted(hf_tok):
    serving, engine = make(hf_tok, "Hello!")
    run(serving.create(body(n=2), "r1"))
    assert engine.aborted == []


# ------------------------------------------------------------------------------------ guided decoding seam

def test_guided_required_family_kind(hf_tok):
    guided = FakeGuided(lambda tc, tools, rf: FakePlan("family") if tc == "required" else None)
    serving, engine = make(hf_tok, guided=guided)
    resp = run(serving.create(body(tools=TOOLS, tool_choice="required", parallel_tool_calls=False, n=2), "r1"))
    assert guided.plans[0]["tool_choice"] == "required" and guided.plans[0]["parallel_tool_calls"] is False
    assert guided.plans[0]["family"] == "qwen2_5"
    assert len(guided.masks) == 2 and engine.calls[0][1].logits_mask is guided.masks[0]
    assert engine.calls[1][1].logits_mask is guided.masks[1]
    assert resp["choices"][0]["finish_reason"] == "tool_calls"
    run(serving.create(body(tools=TOOLS), "r2"))
    assert engine.calls[-1][1].logits_mask is None


def test_guided_arguments_json_kind(hf_tok):
    guided = FakeGuided(lambda tc, tools, rf: FakePlan("arguments_json", "get_weather",
                                                       prompt_hint="Call get_weather; answer with its arguments."))
    args = '{"city": "Paris"}'
    serving, engine = make(hf_tok, args, guided=guided)
    d = body(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    resp = run(serving.create(d, "r1"))
    ch = resp["choices"][0]
    assert ch["finish_reason"] == "tool_calls" and ch["message"]["content"] == ""
    assert ch["message"]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": args}
    assert "Call get_weather; answer with its arguments." in hf_tok.decode(engine.calls[0][0])
    msg = reassemble(stream_events(serving, dict(d, stream=True)))
    assert msg["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": args}
    assert msg["finish_reason"] == "tool_calls"


def test_guided_response_format(hf_tok):
    guided = FakeGuided(lambda tc, tools, rf: FakePlan("family") if rf else None)
    serving, engine = make(hf_tok, '{"a": 1}', guided=guided)
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    resp = run(serving.create(body(response_format=rf), "r1"))
    assert guided.plans[0]["response_format"] == {"type": "json_schema",
                                                  "json_schema": {"name": "x", "schema": {"type": "object"}}}
    assert engine.calls[0][1].logits_mask is not None
    assert resp["choices"][0]["message"]["content"] == '{"a": 1}'


def test_guided_plan_failure_is_422(hf_tok):
    class Bad(FakeGuided):
        def plan(self, **kw):
            raise ValueError("unsupported schema keyword 'foo'")

    serving, _ = make(hf_tok, guided=Bad())
    with pytest.raises(ValidationFailure) as e:
        run(serving.create(body(tools=TOOLS, tool_choice="required"), "r1"))
    assert e.value.status == 422 and "unsupported schema keyword" in e.value.message


def test_guided_arguments_json_unnamed_and_with_reasoning(hf_tok):
    guided = FakeGuided(lambda tc, tools, rf: FakePlan("arguments_json", None, prompt_hint="Pick one."))
    text = '<think>which one?</think>\n {"name": "get_time", "arguments": {"tz": "UTC"}}'
    serving, engine = make(hf_tok, text, guided=guided, options=ServingOptions(enable_reasoning=True))
    d = body(tools=TOOLS, tool_choice="required")
    resp = run(serving.create(d, "r1"))
    assert guided.plans[0]["reasoning"] is True
    msg = resp["choices"][0]["message"]
    assert msg["reasoning_content"] == "which one?" and msg["content"] == ""
    assert msg["tool_calls"][0]["function"] == {"name": "get_time", "arguments": '{"tz": "UTC"}'}
    smsg = reassemble(stream_events(serving, dict(d, stream=True)))
    assert smsg["reasoning_content"] == "which one?" and smsg["finish_reason"] == "tool_calls"
    assert [c["function"] for c in smsg["tool_calls"]] == [c["function"] for c in msg["tool_calls"]]


def test_guided_arguments_json_named_whitespace_and_cutoff(hf_tok):
    guided = FakeGuided(lambda tc, tools, rf: FakePlan("arguments_json", "get_weather"))
    serving, _ = make(hf_tok, '\n  {"city": "Oslo"} \n', guided=guided)
    d = body(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    resp = run(serving.create(d, "r1"))
    assert resp["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"city": "Oslo"}'
    smsg = reassemble(stream_events(serving, dict(d, stream=True)))
    assert smsg["tool_calls"][0]["function"]["arguments"] == '{"city": "Oslo"}'
    # cut off by max_tokens: no call in the answer, the text stays content; both say "length"
    resp = run(serving.create(dict(d, max_tokens=4), "r2"))
    ch = resp["choices"][0]
    assert ch["message"]["tool_calls"] == [] and ch["finish_reason"] == "length" and ch["message"]["content"]
    assert reassemble(stream_events(serving, dict(d, max_tokens=4, stream=True)))["finish_reason"] == "length"


def test_engine_abort_output_is_503(hf_tok):
    class AbortingEngine(FakeEngine):
        async def generate(self, prompt_ids, params, request_id):
            from mindie_like.engine.types import RequestOutput
            yield RequestOutput(request_id, [1], "a")
            yield RequestOutput(request_id, [], "", finished=True, finish_reason="abort")

    engine = AbortingEngine(hf_tok, "x")
    serving = ChatServing(engine, hf_tok, MODEL, output_parser_cls=FakeChatOutputParser)
    with pytest.raises(ValidationFailure) as e:
        run(serving.create(body(), "r1"))
    assert e.value.status == 503 and e.value.error_type == "Service Unavailable"
    events = stream_events(serving, body(stream=True))
    assert events[-2]["error_type"] == "Service Unavailable" and events[-1] == "[DONE]"


def test_generation_defaults_from_model_dir(tmp_path):
    from mindie_like.serving import defaults_from_model_dir
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05, "do_sample": True,
         "eos_token_id": [1, 2], "max_new_tokens": 2048}))
    assert defaults_from_model_dir(tmp_path) == {"temperature": 0.7, "top_p": 0.8, "top_k": 20,
                                                 "repetition_penalty": 1.05}
    assert defaults_from_model_dir(tmp_path / "missing") == {}


def test_internal_errors_are_500_without_traceback(hf_tok, monkeypatch):
    serving, _ = make(hf_tok)

    def broken(text, fences=None):
        raise RuntimeError("tokenizer exploded")

    monkeypatch.setattr(serving.tokenizer, "encode_prompt", broken)
    with pytest.raises(ValidationFailure) as e:
        run(serving.create(body(), "r1"))
    assert (e.value.status, e.value.error_type) == (500, "Incomplete Generation")
    assert e.value.message == "internal error (RuntimeError)"


class RecordingMetrics:
    def __init__(self):
        self.events = []

    def __getattr__(self, name):
        if name.startswith(("observe_", "add_", "request_")):
            return lambda *a, **kw: self.events.append((name, a, kw))
        raise AttributeError(name)

    def names(self):
        return [e[0] for e in self.events]


def test_metrics_hooks(hf_tok):
    m = RecordingMetrics()
    engine = FakeEngine(hf_tok, "Hello there!")
    serving = ChatServing(engine, hf_tok, MODEL, output_parser_cls=FakeChatOutputParser, metrics=m)
    resp = run(serving.create(body(), "r1"))
    names = m.names()
    assert names.count("observe_ttft") == 1 and names.count("request_success") == 1
    assert names.count("observe_token_time") == resp["usage"]["completion_tokens"] - 1
    assert ("add_tokens", (), {"prompt": resp["usage"]["prompt_tokens"],
                               "generation": resp["usage"]["completion_tokens"]}) in m.events
    assert names[-1] == "request_success" and "observe_e2e" in names

    m.events.clear()
    stream_events(serving, body(stream=True))
    assert m.names().count("request_success") == 1 and m.names().count("observe_ttft") == 1

    m.events.clear()
    with pytest.raises(ValidationFailure):
        run(serving.create(body(temperature=-1), "r2"))
    assert m.names() == ["request_failed"]

    m.events.clear()
    failing = ChatServing(FakeEngine(hf_tok, "a b c d", fail_after=2), hf_tok, MODEL,
                          output_parser_cls=FakeChatOutputParser, metrics=m)
    events = stream_events(failing, body(stream=True))
    assert "error" in events[-2] and m.names()[-1] == "request_failed" and "request_success" not in m.names()
