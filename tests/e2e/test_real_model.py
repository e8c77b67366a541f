"""Opt-in (`bin/run_tests -m real_model`): the default config's demo model (Qwen2.5-Coder-0.5B-Instruct), as
bin/install leaves it, driven the way the MindIE function-call page does (its step 4 and step 5 requests)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import openai
import pytest

from benchmarks.loadgen import WEATHER_TOOLS, chat_messages
from tests.support.first_output import header_char, releasable, token_of

from .conftest import REPO

pytestmark = pytest.mark.real_model

DEMO = Path(os.environ.get("MINDIE_LIKE_DEMO_MODEL", REPO / "models" / "qwen2.5-coder-0.5b-instruct"))
SEED_TOOLS = [{"type": "function", "function": {
    "name": "get_delivery_date",
    "description": "Get the delivery date for a customer's order. Call this whenever you need to know the delivery "
                   "date, for example when a customer asks 'Where is my package'",
    "parameters": {"type": "object", "properties": {
        "order_id": {"type": "string", "description": "The customer's order ID."}},
        "required": ["order_id"], "additionalProperties": False}}}]
SEED_MESSAGES = [
    {"role": "system", "content": "You are a helpful customer support assistant. Use the supplied tools to assist "
                                  "the user."},
    {"role": "user", "content": "Hi, can you tell me the delivery date for my order?  my order number is 999888"}]


@pytest.fixture(scope="module")
def demo(daemon_factory):
    if not any(DEMO.glob("*.gguf")) and not (DEMO / "config.json").is_file():
        pytest.fail(f"the demo model is not at {DEMO}: run bin/fetch_models (or set MINDIE_LIKE_DEMO_MODEL)")
    # the imported model is shared with the user's other runs (paths.cache_dir: the first import of a GGUF takes
    # a minute or more)
    return daemon_factory(DEMO, model={"npuMemSize": -1})      # the shipped KV sizing, not the tiny models' cache


@pytest.fixture(scope="module")
def client(demo):
    return openai.OpenAI(base_url=demo.base_url + "/v1", api_key="unused", max_retries=0, timeout=600,
                         http_client=openai.DefaultHttpxClient(verify=demo.ssl_context()))


def test_demo_model_is_served(demo):
    status, raw = demo.request("GET", "/v1/models")
    assert status == 200 and json.loads(raw)["data"][0]["id"] == "qwen2.5-coder-0.5b-instruct"
    status, raw = demo.request("GET", "/info", plane="management")
    assert json.loads(raw)["model_type"] == "qwen2"


@pytest.mark.parametrize("stream", [False, True])
def test_seed_request_required_calls_get_delivery_date(client, demo, stream):
    kw = dict(model=demo.model_name, messages=SEED_MESSAGES, tools=SEED_TOOLS, tool_choice="required",
              parallel_tool_calls=False, temperature=0, max_tokens=200)
    if not stream:
        ch = client.chat.completions.create(**kw).choices[0]
        calls = [(c.function.name, c.function.arguments) for c in ch.message.tool_calls]
        finish = ch.finish_reason
    else:
        parts, finish = {}, None
        for chunk in client.chat.completions.create(**kw, stream=True):
            for c in chunk.choices:
                for tc in c.delta.tool_calls or []:
                    name, args = parts.get(tc.index, ("", ""))
                    parts[tc.index] = (name + (tc.function.name or ""), args + (tc.function.arguments or ""))
                finish = c.finish_reason or finish
        calls = [parts[i] for i in sorted(parts)]
    assert finish == "tool_calls"
    assert len(calls) == 1 and calls[0][0] == "get_delivery_date"
    assert json.loads(calls[0][1]) == {"order_id": "999888"}


def test_seed_auto_then_follow_up_with_the_tool_result(client, demo):
    first = client.chat.completions.create(model=demo.model_name, messages=SEED_MESSAGES, tools=SEED_TOOLS,
                                           tool_choice="auto", temperature=0, max_tokens=300).choices[0]
    assert first.finish_reason == "tool_calls"
    call = next(c for c in first.message.tool_calls if json.loads(c.function.arguments) == {"order_id": "999888"})
    messages = [SEED_MESSAGES[1],
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": call.id, "type": "function",
                     "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
                {"role": "tool", "content": "the delivery date is 2024.09.10.", "tool_call_id": call.id}]
    answer = client.chat.completions.create(model=demo.model_name, messages=messages, temperature=0,
                                            max_tokens=200).choices[0]
    assert answer.finish_reason == "stop" and not answer.message.tool_calls
    assert "2024" in answer.message.content and "09" in answer.message.content


@pytest.mark.parametrize("prompt", [1, 3, 7])   # a bare-JSON call, prose, a ```json block (on Zen 4)
def test_benchmark_prompts_first_output_at_the_earliest_token(client, demo, prompt):
    """benchmarks/serve_bench's requests (two tools, tool_choice auto, streaming): the first visible output is
    sent at the earliest token the streaming rule allows (tests.support.first_output: prose at the token that
    writes it, a call's header at the token that starts its arguments), and the stream equals the answer."""
    kw = dict(model=demo.model_name, messages=chat_messages(prompt), tools=WEATHER_TOOLS, tool_choice="auto",
              temperature=0, max_tokens=64, logprobs=True)
    want = client.chat.completions.create(**kw).choices[0]
    tokens, first, content, calls = [], None, "", {}
    for chunk in client.chat.completions.create(
            **kw, stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True}):
        for c in chunk.choices:
            tokens += [t.token for t in (c.logprobs.content if c.logprobs else None) or ()]
            if (c.delta.content or c.delta.tool_calls) and first is None:
                first = chunk.usage.completion_tokens
            content += c.delta.content or ""
            for tc in c.delta.tool_calls or ():
                name, args = calls.get(tc.index, ("", ""))
                calls[tc.index] = (name + (tc.function.name or ""), args + (tc.function.arguments or ""))
    assert content == want.message.content
    assert [calls[i] for i in sorted(calls)] == [(c.function.name, c.function.arguments)
                                                 for c in want.message.tool_calls or ()]
    text = "".join(t for t in tokens if t not in ("<|im_end|>", "<|endoftext|>"))
    prefixes = ["".join(tokens[:k]) for k in range(1, len(tokens) + 1)]
    if want.message.tool_calls and not releasable(text[:text.find("{")]):
        earliest = token_of(prefixes, header_char(text))
    else:
        earliest = next(k for k, p in enumerate(prefixes, 1) if releasable(p))
    assert first == earliest, (first, earliest, tokens[:earliest + 1])
