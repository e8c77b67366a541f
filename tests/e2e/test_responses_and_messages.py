"""/v1/responses and /v1/messages end to end: the real daemon with a tiny random qwen2 model, driven by the
official `openai` and `anthropic` clients over mutual TLS.

A random model writes noise, so the first turn of each tool flow forces a call (tool_choice required / any /
named: the grammar makes the call a declared tool with schema-valid arguments); the second turn sends the tool's
result back and must come back as a text answer of the API's shape.
"""
from __future__ import annotations

import json

import anthropic
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .load_helpers import wait_all_blocks_free

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Beijing", "东京"]},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "days"], "additionalProperties": False}
R_TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather forecast", "parameters": WEATHER}]
A_TOOLS = [{"name": "get_weather", "description": "Weather forecast", "input_schema": WEATHER}]
QUESTION = "What's the weather in Paris for 3 days?"


def valid_weather(args: dict) -> None:
    assert set(args) == {"city", "days"} and args["city"] in ("Paris", "Beijing", "东京")
    assert isinstance(args["days"], int) and 1 <= args["days"] <= 7


@pytest.fixture(scope="module")
def daemon(chat_daemon):
    return chat_daemon


@pytest.fixture(scope="module")
def oai(daemon):
    return daemon.openai_client()


@pytest.fixture(scope="module")
def claude(daemon):
    return anthropic.Anthropic(base_url=daemon.base_url, api_key="unused: mutual TLS authenticates",
                               http_client=anthropic.DefaultHttpxClient(verify=daemon.ssl_context()))


# ------------------------------------------------------------------------------------ Responses

def test_responses_two_turn_tool_flow(oai, daemon):
    first = oai.responses.create(model=daemon.model_name, input=QUESTION, tools=R_TOOLS, tool_choice="required",
                                 parallel_tool_calls=False, max_output_tokens=64, temperature=0.8,
                                 extra_body={"seed": 7})
    assert first.status == "completed" and first.object == "response"
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].status == "completed"
    valid_weather(json.loads(calls[0].arguments))
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0

    # the stored response continues the conversation: only the tool's result is sent
    second = oai.responses.create(model=daemon.model_name, previous_response_id=first.id, tool_choice="none",
                                  tools=R_TOOLS, max_output_tokens=8, input=[{
                                      "type": "function_call_output", "call_id": calls[0].call_id,
                                      "output": json.dumps({"forecast": "sunny", "high_c": 21})}])
    assert second.previous_response_id == first.id and second.status in ("completed", "incomplete")
    assert [o.type for o in second.output] == ["message"]
    assert second.output[0].role == "assistant" and second.output[0].content[0].type == "output_text"
    assert second.output_text == second.output[0].content[0].text
    # the first turn, its call and the result are in the prompt: more than the question alone
    alone = oai.responses.create(model=daemon.model_name, input=QUESTION, tools=R_TOOLS, tool_choice="none",
                                 max_output_tokens=1, store=False)
    assert second.usage.input_tokens > alone.usage.input_tokens + 10
    assert oai.responses.retrieve(second.id).output_text == second.output_text
    oai.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(second.id)


def test_responses_stream_tool_flow(oai, daemon):
    events = list(oai.responses.create(model=daemon.model_name, input=QUESTION, tools=R_TOOLS, stream=True,
                                       tool_choice={"type": "function", "name": "get_weather"},
                                       max_output_tokens=64, temperature=0.8, extra_body={"seed": 11}))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    [call] = [o for o in final.output if o.type == "function_call"]
    index = final.output.index(call)
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert deltas == done.arguments == call.arguments and done.output_index == index and done.item_id == call.id
    valid_weather(json.loads(call.arguments))
    added = [e for e in events if e.type == "response.output_item.added" and e.item.type == "function_call"]
    assert added[0].item.call_id == call.call_id and added[0].output_index == index

    # second turn without the store: the earlier output items go back as input, with the result
    history = [{"role": "user", "content": QUESTION}] + [o.model_dump(exclude_none=True) for o in final.output]
    with oai.responses.stream(model=daemon.model_name, tools=R_TOOLS, tool_choice="none", max_output_tokens=8,
                              store=False, input=history + [{"type": "function_call_output",
                                                             "call_id": call.call_id, "output": "sunny, 21 C"}]) as s:
        events = list(s)
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    # 8 tokens of a random model: cut off, so the stream ends with response.incomplete (OpenAI's event for it)
    assert events[-1].type in ("response.completed", "response.incomplete")
    answer = events[-1].response
    assert [o.type for o in answer.output] == ["message"] and answer.output_text == streamed
    with pytest.raises(openai.NotFoundError):    # store: false keeps nothing
        oai.responses.retrieve(answer.id)


def test_responses_errors_in_openai_shape(oai, daemon):
    with pytest.raises(openai.NotFoundError) as e:
        oai.responses.create(model=daemon.model_name, input="hi", previous_response_id="resp_unknown")
    assert e.value.status_code == 404
    assert e.value.body["type"] == "invalid_request_error" and e.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as e:
        oai.responses.create(model=daemon.model_name, input=[{"type": "computer_call_output", "call_id": "x"}])
    assert e.value.body["param"] == "input[0].type" and e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(model=daemon.model_name, input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": "https://example.com/a.png"}]}])
    status, raw = daemon.request("POST", "/v1/responses", body=b"{not json")
    body = json.loads(raw)
    assert status == 400 and body["error"]["type"] == "invalid_request_error" and body["error"]["message"]
    status, raw = daemon.request("GET", "/v1/responses/resp_nothing")
    assert status == 404 and set(json.loads(raw)["error"]) == {"message", "type", "param", "code"}


# ------------------------------------------------------------------------------------ Messages

def test_messages_two_turn_tool_flow(claude, daemon):
    first = claude.messages.create(model=daemon.model_name, max_tokens=64, tools=A_TOOLS, tool_choice={"type": "any"},
                                   messages=[{"role": "user", "content": QUESTION}],
                                   extra_body={"temperature": 0.8, "top_k": 50})
    assert first.type == "message" and first.role == "assistant" and first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    assert uses and all(u.name == "get_weather" for u in uses)
    valid_weather(uses[0].input)
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0

    conversation = [{"role": "user", "content": QUESTION},
                    {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": u.id, "content": "sunny, 21 C"}
                                                 for u in uses]}]
    second = claude.messages.create(model=daemon.model_name, max_tokens=8, tools=A_TOOLS,
                                    tool_choice={"type": "none"}, messages=conversation)
    assert [b.type for b in second.content] == ["text"]
    assert second.stop_reason in ("end_turn", "max_tokens") and second.usage.output_tokens <= 8
    counted = claude.messages.count_tokens(model=daemon.model_name, messages=conversation, tools=A_TOOLS,
                                           tool_choice={"type": "none"})
    assert counted.input_tokens == second.usage.input_tokens


def test_messages_stream_tool_flow(claude, daemon):
    request = dict(model=daemon.model_name, max_tokens=64, tools=A_TOOLS,
                   tool_choice={"type": "tool", "name": "get_weather"},
                   messages=[{"role": "user", "content": QUESTION}], extra_body={"temperature": 0.8})
    raw = list(claude.messages.create(stream=True, **request))
    kinds = [e.type for e in raw]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert raw[-2].delta.stop_reason == "tool_use"
    starts = [e for e in raw if e.type == "content_block_start" and e.content_block.type == "tool_use"]
    assert starts and starts[0].content_block.name == "get_weather"
    partial = "".join(e.delta.partial_json for e in raw
                      if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
                      and e.index == starts[0].index)
    valid_weather(json.loads(partial))

    with claude.messages.stream(**request) as s:       # the SDK's own accumulation of the events
        final = s.get_final_message()
    [use] = [b for b in final.content if b.type == "tool_use"]
    valid_weather(use.input)
    with claude.messages.stream(model=daemon.model_name, max_tokens=8, tools=A_TOOLS, tool_choice={"type": "none"},
                                messages=[{"role": "user", "content": QUESTION},
                                          {"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                                                            for b in final.content]},
                                          {"role": "user", "content": [{"type": "tool_result",
                                                                        "tool_use_id": use.id,
                                                                        "content": "sunny"}]}]) as s:
        text = "".join(s.text_stream)
        answer = s.get_final_message()
    assert [b.type for b in answer.content] == ["text"] and answer.content[0].text == text


def test_messages_errors_in_anthropic_shape(claude, daemon):
    status, raw = daemon.request("POST", "/v1/messages", body={
        "model": daemon.model_name, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"})
    assert status == 400 and json.loads(raw) == {"type": "error", "error": {
        "type": "invalid_request_error", "message": "max_tokens: field required"}}
    with pytest.raises(anthropic.BadRequestError) as e:
        claude.messages.create(model=daemon.model_name, max_tokens=8, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}])
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="claude-unknown", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    status, raw = daemon.request("POST", "/v1/messages/count_tokens", body=b"[1, 2")
    assert status == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error"


# ------------------------------------------------------------------------------------ shared plumbing

def _metric(daemon, name: str) -> float:
    code, raw = daemon.request("GET", "/metrics", plane="metrics")
    assert code == 200
    return sum(s.value for fam in text_string_to_metric_families(raw.decode()) for s in fam.samples
               if s.name == name)


def test_structured_output_and_metrics(oai, claude, daemon):
    names = ("request_received_total", "request_success_total", "request_failed_total", "generation_tokens_total")
    before = {n: _metric(daemon, n) for n in names}
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]},
                                               "confidence": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["answer", "confidence"], "additionalProperties": False}
    r = oai.responses.create(model=daemon.model_name, input="Is the sky blue?", max_output_tokens=48,
                             text={"format": {"type": "json_schema", "name": "verdict", "schema": schema}})
    value = json.loads(r.output_text)             # the grammar made it valid JSON of the schema
    assert set(value) == {"answer", "confidence"} and value["answer"] in ("yes", "no")
    claude.messages.create(model=daemon.model_name, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model=daemon.model_name, max_tokens=4, messages=[{"role": "user", "content": "hi"}],
                               extra_body={"temperature": 3})
    after = {n: _metric(daemon, n) for n in names}
    assert after["request_received_total"] == before["request_received_total"] + 3
    assert after["request_success_total"] == before["request_success_total"] + 2
    assert after["request_failed_total"] == before["request_failed_total"] + 1
    assert after["generation_tokens_total"] > before["generation_tokens_total"]


def test_disconnect_aborts_and_frees_blocks(claude, daemon):
    with claude.messages.stream(model=daemon.model_name, max_tokens=2000, messages=[{"role": "user", "content": "hi"}],
                                extra_body={"temperature": 1.0}) as s:
        for i, _ in enumerate(s):
            if i == 4:
                break
    wait_all_blocks_free(daemon, timeout=30)
