"""/v1/chat/completions and /v1/completions end to end: the real daemon with a tiny random qwen2 model, driven by
the official `openai` client over mutual TLS.

A random model writes noise, so tool calls here come from enforced tool_choice: the tools' parameters are
bounded (enums, integer ranges, strings with maxLength) because a random model never closes an unbounded string.
"""
from __future__ import annotations

import asyncio
import json

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .load_helpers import wait_all_blocks_free

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather forecast for a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "enum": ["Paris", "Beijing", "东京"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
            "required": ["city", "days"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "get_delivery_date", "description": "Delivery date of an order",
        "parameters": {"type": "object", "properties": {
            "order_id": {"type": "string", "maxLength": 8},
            "express": {"type": "boolean"}},
            "required": ["order_id"], "additionalProperties": False}}},
]
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What's the weather in Paris for 3 days, and when does order 999888 arrive?"}]


def assert_valid_call(call) -> dict:
    """A declared tool with schema-valid arguments; returns the parsed arguments."""
    assert call.type == "function"
    assert call.id.startswith("call_") and len(call.id) == 13 and call.id[5:].isalnum()
    args = json.loads(call.function.arguments)
    assert isinstance(args, dict)
    if call.function.name == "get_weather":
        assert set(args) == {"city", "days"}
        assert args["city"] in ("Paris", "Beijing", "东京")
        assert isinstance(args["days"], int) and 1 <= args["days"] <= 7
    elif call.function.name == "get_delivery_date":
        assert "order_id" in args and set(args) <= {"order_id", "express"}
        assert isinstance(args["order_id"], str) and len(args["order_id"]) <= 8
        assert isinstance(args.get("express", True), bool)
    else:
        pytest.fail(f"undeclared tool {call.function.name!r}")
    return args


@pytest.fixture(scope="module")
def daemon(chat_daemon):
    return chat_daemon


@pytest.fixture(scope="module")
def client(daemon):
    return openai.OpenAI(base_url=daemon.base_url + "/v1", api_key="unused", max_retries=0, timeout=120,
                         http_client=openai.DefaultHttpxClient(verify=daemon.ssl_context()))


def run_async(daemon, make_calls):
    """Runs `make_calls(aclient)` (a coroutine) with an AsyncOpenAI client bound to a fresh event loop."""
    async def main():
        async with openai.AsyncOpenAI(base_url=daemon.base_url + "/v1", api_key="unused", max_retries=0,
                                      timeout=300, http_client=openai.DefaultAsyncHttpxClient(
                                          verify=daemon.ssl_context())) as aclient:
            return await make_calls(aclient)
    return asyncio.run(main())


def collect_stream(stream):
    """(content, {index: (id, name, arguments)}, finish_reason, usage) reassembled from chunks."""
    content, calls, finish, usage, roles = "", {}, None, None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            d = ch.delta
            if d.role:
                roles.append(d.role)
            content += d.content or ""
            for tc in d.tool_calls or []:
                cid, name, args = calls.get(tc.index, (None, None, ""))
                if tc.id:
                    assert cid is None, "a call's id is sent once"
                    cid = tc.id
                if tc.function and tc.function.name:
                    assert name is None, "a call's name is sent once, whole"
                    name = tc.function.name
                args += (tc.function.arguments or "") if tc.function else ""
                calls[tc.index] = (cid, name, args)
            if ch.finish_reason:
                finish = ch.finish_reason
    assert roles[:1] == ["assistant"]
    return content, calls, finish, usage


def test_plain_chat_stream_equals_non_stream(client, daemon):
    kw = dict(model=daemon.model_name, messages=MESSAGES, max_tokens=12, temperature=0)
    r = client.chat.completions.create(**kw)
    assert r.object == "chat.completion" and r.model == daemon.model_name
    ch = r.choices[0]
    assert ch.message.role == "assistant" and isinstance(ch.message.content, str) and ch.message.content
    assert ch.finish_reason in ("stop", "length") and not ch.message.tool_calls
    assert r.usage.prompt_tokens > 10 and 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    content, calls, finish, usage = collect_stream(client.chat.completions.create(
        **kw, stream=True, stream_options={"include_usage": True}))
    assert content == ch.message.content and not calls and finish == ch.finish_reason
    assert usage.completion_tokens == r.usage.completion_tokens and usage.prompt_tokens == r.usage.prompt_tokens


def test_prefix_cache_reported(client, daemon):
    long_user = {"role": "user", "content": "Tell me a story about a robot. " * 40}
    kw = dict(model=daemon.model_name, messages=[long_user], max_tokens=2, temperature=0)
    client.chat.completions.create(**kw)
    r = client.chat.completions.create(**kw)
    assert r.usage.prompt_tokens_details.cached_tokens >= 128


def _choices(daemon, seeds, **kw):
    """The first choice of one request per seed, sent concurrently (the engine batches them)."""
    async def run(aclient):
        async def one(seed):
            r = await aclient.chat.completions.create(model=daemon.model_name, messages=MESSAGES, tools=TOOLS,
                                                      temperature=1.0, seed=seed, max_tokens=400, **kw)
            return r.choices[0]
        return await asyncio.gather(*(one(s) for s in seeds))
    return run_async(daemon, run)


# how many seeds (concurrent requests) the enforced-call checks sample: a batch by default, 100 under `fuzz`
SEED_COUNTS = [16, pytest.param(100, marks=pytest.mark.fuzz)]


@pytest.mark.parametrize("seeds", SEED_COUNTS)
def test_required_single_call_across_seeds(daemon, seeds):
    choices = _choices(daemon, range(seeds), tool_choice="required", parallel_tool_calls=False)
    for ch in choices:
        assert ch.finish_reason == "tool_calls", ch
        assert len(ch.message.tool_calls) == 1
        assert_valid_call(ch.message.tool_calls[0])
    ids = [ch.message.tool_calls[0].id for ch in choices]
    assert len(set(ids)) == len(ids)
    assert {ch.message.tool_calls[0].function.name for ch in choices} == {"get_weather", "get_delivery_date"}


def test_required_parallel_calls(daemon):
    for ch in _choices(daemon, range(100, 110), tool_choice="required"):
        assert ch.finish_reason == "tool_calls" and ch.message.tool_calls
        for call in ch.message.tool_calls:
            assert_valid_call(call)


@pytest.mark.parametrize("seeds", SEED_COUNTS)
def test_named_function_across_seeds(daemon, seeds):
    for ch in _choices(daemon, range(200, 200 + seeds),
                       tool_choice={"type": "function", "function": {"name": "get_delivery_date"}}):
        assert ch.finish_reason == "tool_calls"
        assert [c.function.name for c in ch.message.tool_calls] == ["get_delivery_date"]
        assert_valid_call(ch.message.tool_calls[0])


def test_tool_choice_none_yields_no_call(client, daemon):
    for seed in range(5):
        r = client.chat.completions.create(model=daemon.model_name, messages=MESSAGES, tools=TOOLS,
                                           tool_choice="none", temperature=1.0, seed=seed, max_tokens=16)
        ch = r.choices[0]
        assert not ch.message.tool_calls and ch.finish_reason in ("stop", "length")


def test_streamed_tool_calls_equal_non_streamed(client, daemon):
    for seed in range(4):
        kw = dict(model=daemon.model_name, messages=MESSAGES, tools=TOOLS, tool_choice="required",
                  temperature=0.8, seed=seed, max_tokens=600)
        r = client.chat.completions.create(**kw)
        content, calls, finish, _ = collect_stream(client.chat.completions.create(**kw, stream=True))
        want = [(c.function.name, c.function.arguments) for c in r.choices[0].message.tool_calls]
        got = [(calls[i][1], calls[i][2]) for i in sorted(calls)]
        assert got == want and finish == "tool_calls" == r.choices[0].finish_reason
        assert sorted(calls) == list(range(len(calls)))
        assert all(calls[i][0].startswith("call_") for i in calls)


def test_streamed_content_with_tools_arrives_token_by_token(client, daemon):
    """tools + tool_choice "auto", as benchmarks/serve_bench sends them: the random model writes prose, and the
    stream sends it as it is written (each chunk stamped with the tokens generated so far), not held back as a
    possible call, and reassembles to the non-streamed answer."""
    kw = dict(model=daemon.model_name, messages=MESSAGES, tools=TOOLS, tool_choice="auto", temperature=0,
              max_tokens=24, logprobs=True)
    r = client.chat.completions.create(**kw)
    ch = r.choices[0]
    assert ch.message.content and not ch.message.tool_calls and r.usage.completion_tokens >= 8
    sent, content, tokens = [], "", []
    for chunk in client.chat.completions.create(
            **kw, stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True}):
        for c in chunk.choices:
            assert not c.delta.tool_calls
            tokens += [t.token for t in (c.logprobs.content if c.logprobs else None) or ()]
            if c.delta.content:
                content += c.delta.content
                sent.append(chunk.usage.completion_tokens)
    assert content == ch.message.content
    assert tokens == [t.token for t in ch.logprobs.content]
    # the first token with a character no call can start with is visible at that token
    first_plain = next(k for k, t in enumerate(tokens, 1) if t.strip() and t.strip()[0] not in "<{`[")
    assert sent[0] <= first_plain, (sent, tokens)
    # incremental: content goes out at (nearly) every token, one chunk per step
    assert len(sent) == len(set(sent)) and len(sent) >= len(tokens) // 2, (sent, tokens)


def test_seed_reproduces_and_n_choices(client, daemon):
    kw = dict(model=daemon.model_name, messages=MESSAGES, max_tokens=8, temperature=1.0, seed=1234)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert a.choices[0].message.content == b.choices[0].message.content
    r = client.chat.completions.create(**{**kw, "n": 3}, logprobs=True, top_logprobs=2)
    assert [c.index for c in r.choices] == [0, 1, 2]
    for c in r.choices:
        assert c.logprobs.content and all(len(t.top_logprobs) == 2 for t in c.logprobs.content)


def test_stop_string_ends_the_answer(client, daemon):
    base = client.chat.completions.create(model=daemon.model_name, messages=MESSAGES, max_tokens=16,
                                          temperature=0).choices[0].message.content
    stop = base[len(base) // 2: len(base) // 2 + 2]
    if not stop.strip():
        pytest.skip("no stable stop string in the greedy output")
    r = client.chat.completions.create(model=daemon.model_name, messages=MESSAGES, max_tokens=16, temperature=0,
                                       stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == base[:base.index(stop)]


def test_completions_route(client, daemon):
    kw = dict(model=daemon.model_name, prompt="The capital of France is", max_tokens=10, temperature=0)
    r = client.completions.create(**kw)
    assert r.object == "text_completion" and r.choices[0].text and r.usage.completion_tokens <= 10
    text = "".join(c.choices[0].text for c in client.completions.create(**kw, stream=True) if c.choices)
    assert text == r.choices[0].text


@pytest.mark.parametrize("body,status,needle", [
    ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 422, "Model not found"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, 422, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_p": 1.5}, 422, "top_p"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 21, "logprobs": True}, 422, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 0}, 422, "n"),
    ({"messages": [{"role": "pirate", "content": "hi"}]}, 422, "role"),
    ({"messages": []}, 422, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS,
      "tool_choice": {"type": "function", "function": {"name": "missing"}}}, 422, "missing"),
    ({"messages": [{"role": "user", "content": "hi"}],
      "tools": [{"type": "function", "function": {"name": "bad name!"}}]}, 422, "name"),
    ({"messages": [{"role": "user", "content": "hi " * 5000}]}, 422, "token"),
])
def test_validation_errors(daemon, body, status, needle):
    body = {"model": daemon.model_name, **body} if "model" not in body else body
    code, raw = daemon.request("POST", "/v1/chat/completions", body)
    assert code == status, raw
    err = json.loads(raw)
    assert set(err) == {"error", "error_type"} and err["error_type"] == "Input Validation Error"
    assert needle.lower() in err["error"].lower()


def test_openai_client_sees_errors(client, daemon):
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.chat.completions.create(model=daemon.model_name, messages=MESSAGES, temperature=5, top_p=0)
    err = e.value.response.json()          # MindIE's flat body: {"error": str, "error_type": str}
    assert "top_p" in err["error"] and err["error_type"] == "Input Validation Error"


def test_invalid_json_is_422(daemon):
    code, raw = daemon.request("POST", "/v1/chat/completions", b'{"model": ')
    assert code == 422 and json.loads(raw)["error_type"] == "Input Validation Error"


def _metric(daemon, name: str) -> float:
    code, raw = daemon.request("GET", "/metrics", plane="metrics")
    assert code == 200
    total = 0.0
    for fam in text_string_to_metric_families(raw.decode()):
        for s in fam.samples:
            if s.name == name:
                total += s.value
    return total


def test_status_and_metrics_move(client, daemon):
    before = {n: _metric(daemon, n) for n in ("request_received_total", "request_success_total",
                                               "generation_tokens_total", "prompt_tokens_total",
                                               "time_to_first_token_seconds_count",
                                               "e2e_request_latency_seconds_count")}
    client.chat.completions.create(model=daemon.model_name, messages=MESSAGES, max_tokens=5, temperature=0)
    after = {n: _metric(daemon, n) for n in before}
    assert after["request_received_total"] == before["request_received_total"] + 1
    assert after["request_success_total"] == before["request_success_total"] + 1
    assert after["generation_tokens_total"] > before["generation_tokens_total"]
    assert after["prompt_tokens_total"] > before["prompt_tokens_total"]
    assert after["time_to_first_token_seconds_count"] == before["time_to_first_token_seconds_count"] + 1
    assert after["e2e_request_latency_seconds_count"] == before["e2e_request_latency_seconds_count"] + 1
    code, raw = daemon.request("GET", "/v1/status", plane="management")
    res = json.loads(raw)["resource"]
    assert res["totalNpuBlockNums"] > 0 and res["freeNpuBlockNums"] == res["totalNpuBlockNums"]


def test_client_disconnect_aborts_and_frees_blocks(client, daemon):
    stream = client.chat.completions.create(model=daemon.model_name, messages=MESSAGES, max_tokens=2000,
                                            temperature=1.0, stream=True, extra_body={"ignore_eos": True})
    seen = 0
    for _ in stream:
        seen += 1
        if seen == 3:
            break
    stream.close()
    wait_all_blocks_free(daemon, timeout=30)    # the disconnected request was aborted


def test_response_format_json_schema_is_enforced(client, daemon):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]},
                                               "confidence": {"type": "integer", "minimum": 0, "maximum": 100}},
              "required": ["answer", "confidence"], "additionalProperties": False}
    for seed in range(5):
        r = client.chat.completions.create(
            model=daemon.model_name, messages=MESSAGES, temperature=1.0, seed=seed, max_tokens=200,
            response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}})
        ch = r.choices[0]
        assert ch.finish_reason == "stop" and not ch.message.tool_calls
        value = json.loads(ch.message.content)
        assert value["answer"] in ("yes", "no") and 0 <= value["confidence"] <= 100
        assert set(value) == set(schema["required"])
    r = client.chat.completions.create(model=daemon.model_name, messages=MESSAGES, temperature=1.0, seed=7,
                                       max_tokens=300, response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":   # a random model may fill max_tokens inside a long string
        assert isinstance(json.loads(r.choices[0].message.content), dict)
