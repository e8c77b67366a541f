"""The Responses and Messages APIs on the chat pipeline, without HTTP: a scripted engine over a real tokenizer,
the real Qwen2.5 tool-call processor and reasoning splitter. Exact event sequences; the streamed text and
arguments equal the non-streamed answer for several token splits."""
from __future__ import annotations

import asyncio
import json

import pytest

from mindie_like.engine.types import EngineError
from mindie_like.protocol.errors import ValidationFailure
from mindie_like.reasoning import ChatOutputParser
from mindie_like.serving import ChatServing, ServingOptions
from mindie_like.serving.anthropic import MessagesServing, ThinkingSigner
from mindie_like.serving.response_store import ResponseStore
from mindie_like.serving.responses import ResponsesServing
from mindie_like.tool_call import ToolsCallProcessorManager
from tests.support.serving_fakes import FakeEngine

MODEL = "m"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
R_TOOLS = [{"type": "function", "name": "get_weather", "parameters": WEATHER},
           {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}]
A_TOOLS = [{"name": "get_weather", "input_schema": WEATHER},
           {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}]
CALLS_TEXT = ('Checking both.\n'
              '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris 巴黎"}}\n</tool_call>\n'
              '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')
SPLITS = [1, 3]


def run(coro):
    return asyncio.run(coro)


def make_chat(hf_tok, script, reasoning=False, **engine_kw):
    engine = FakeEngine(hf_tok, script, **engine_kw)
    proc = ToolsCallProcessorManager.get_tool_call_processor("qwen2_5")(tokenizer=None)
    chat = ChatServing(engine, hf_tok, MODEL, tool_processor=proc, options=ServingOptions(enable_reasoning=reasoning),
                       output_parser_cls=ChatOutputParser)
    return chat, engine


def events_of(agen) -> list[tuple[str, dict]]:
    async def go():
        out = []
        async for b in agen:
            for block in b.decode().split("\n\n"):
                if not block:
                    continue
                head, data = block.split("\n", 1)
                assert head.startswith("event: ") and data.startswith("data: ")
                obj = json.loads(data[len("data: "):])
                assert obj["type"] == head[len("event: "):]
                out.append((obj["type"], obj))
        return out
    return run(go())


# ------------------------------------------------------------------------------------ Responses

def responses(hf_tok, script, store=None, **kw):
    chat, engine = make_chat(hf_tok, script, **kw)
    return ResponsesServing(chat, store or ResponseStore(10)), engine


@pytest.mark.parametrize("split", SPLITS)
def test_responses_text_exact_event_sequence(hf_tok, split):
    serving, _ = responses(hf_tok, "Hello there, 世界!", tokens_per_step=split)
    answer = run(serving.create({"input": "hi"}, "r1"))
    assert answer["status"] == "completed" and answer["object"] == "response"
    [msg] = answer["output"]
    assert msg["type"] == "message" and msg["content"][0]["text"] == "Hello there, 世界!"
    assert answer["usage"]["output_tokens"] > 0 and answer["usage"]["input_tokens"] > 0

    events = events_of(serving.stream({"input": "hi", "stream": True}, "r2"))
    kinds = [k for k, _ in events]
    n_deltas = kinds.count("response.output_text.delta")
    assert n_deltas >= 1
    assert kinds == (["response.created", "response.in_progress", "response.output_item.added",
                      "response.content_part.added"] + ["response.output_text.delta"] * n_deltas +
                     ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                      "response.completed"])
    assert [e["sequence_number"] for _, e in events] == list(range(len(events)))
    deltas = "".join(e["delta"] for k, e in events if k == "response.output_text.delta")
    done = next(e for k, e in events if k == "response.output_text.done")
    final = events[-1][1]["response"]
    assert deltas == done["text"] == final["output"][0]["content"][0]["text"] == msg["content"][0]["text"]
    item_ids = {e.get("item_id") for k, e in events if "item_id" in e}
    assert item_ids == {final["output"][0]["id"]}
    assert serving.retrieve(final["id"]) == final       # a streamed answer is stored too


@pytest.mark.parametrize("split", SPLITS)
def test_responses_function_calls_stream_equals_create(hf_tok, split):
    serving, engine = responses(hf_tok, CALLS_TEXT, tokens_per_step=split)
    body = {"input": "weather and time?", "tools": R_TOOLS}
    answer = run(serving.create(body, "r1"))
    kinds = [o["type"] for o in answer["output"]]
    assert kinds == ["message", "function_call", "function_call"]
    assert answer["output"][0]["content"][0]["text"] == "Checking both."
    fc = answer["output"][1]
    assert (fc["name"], json.loads(fc["arguments"])) == ("get_weather", {"city": "Paris 巴黎"})
    assert fc["call_id"].startswith("call_") and fc["status"] == "completed"
    # strict defaults to true on the tools handed to the chat pipeline (the guided layer reads it)
    assert all(t["strict"] is True for t in answer["tools"])

    events = events_of(serving.stream({**body, "stream": True}, "r2"))
    final = events[-1][1]["response"]
    assert events[-1][0] == "response.completed"
    assert [o["type"] for o in final["output"]] == kinds
    for index in (1, 2):
        item = final["output"][index]
        deltas = "".join(e["delta"] for k, e in events
                         if k == "response.function_call_arguments.delta" and e["output_index"] == index)
        done = [e for k, e in events if k == "response.function_call_arguments.done" and e["output_index"] == index]
        assert len(done) == 1 and deltas == done[0]["arguments"] == item["arguments"] == \
            answer["output"][index]["arguments"]
        assert done[0]["item_id"] == item["id"] and done[0]["name"] == item["name"]
    added = [e["item"]["type"] for k, e in events if k == "response.output_item.added"]
    assert added == kinds


def test_responses_reasoning_item(hf_tok):
    serving, _ = responses(hf_tok, "<think>Let me think.</think>It is 4.", reasoning=True)
    answer = run(serving.create({"input": "2+2?"}, "r1"))
    assert [o["type"] for o in answer["output"]] == ["reasoning", "message"]
    assert answer["output"][0]["content"] == [{"type": "reasoning_text", "text": "Let me think."}]
    assert answer["output"][1]["content"][0]["text"] == "It is 4."
    events = events_of(serving.stream({"input": "2+2?", "stream": True}, "r2"))
    reasoning = "".join(e["delta"] for k, e in events if k == "response.reasoning_text.delta")
    assert reasoning == "Let me think."
    assert events[-1][1]["response"]["output"] == [
        {**o, "id": e["id"]} for o, e in zip(answer["output"], events[-1][1]["response"]["output"])]


def test_responses_previous_response_id_continues_the_conversation(hf_tok):
    serving, engine = responses(hf_tok, "The answer is blue.")
    first = run(serving.create({"input": "What colour is the sky?", "instructions": "Be brief."}, "r1"))
    assert run(asyncio.sleep(0)) is None and serving.retrieve(first["id"]) == first
    run(serving.create({"input": "Are you sure?", "previous_response_id": first["id"]}, "r2"))
    prompt = hf_tok.decode(engine.calls[-1][0])
    assert "What colour is the sky?" in prompt and "The answer is blue." in prompt and "Are you sure?" in prompt
    assert "Be brief." not in prompt          # instructions are not carried over
    with pytest.raises(ValidationFailure) as e:
        run(serving.create({"input": "x", "previous_response_id": "resp_nope"}, "r3"))
    assert e.value.status == 404 and e.value.message.startswith("previous_response_id:")
    not_kept = run(serving.create({"input": "x", "store": False}, "r4"))
    with pytest.raises(ValidationFailure):
        serving.retrieve(not_kept["id"])
    assert serving.delete(first["id"])["deleted"] is True
    with pytest.raises(ValidationFailure):
        serving.delete(first["id"])


def test_response_store_keeps_the_last_n():
    store = ResponseStore(2)
    for i in range(3):
        store.put(f"r{i}", {"id": f"r{i}"}, [])
    assert store.get("r0") is None and store.get("r1") and store.get("r2") and len(store) == 2
    off = ResponseStore(0)
    off.put("x", {}, [])
    assert off.get("x") is None


def test_responses_input_items_become_chat_turns(hf_tok):
    serving, engine = responses(hf_tok, "Sunny.")
    items = [{"role": "developer", "content": "Answer in English."},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
             {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "need a tool"}]},
             {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
             {"type": "function_call_output", "call_id": "call_1", "output": "12 C, sunny"}]
    run(serving.create({"input": items, "tools": R_TOOLS}, "r1"))
    prompt = hf_tok.decode(engine.calls[-1][0])
    for piece in ("Answer in English.", "Weather?", '"city": "Oslo"', "12 C, sunny"):
        assert piece in prompt
    with pytest.raises(ValidationFailure) as e:
        run(serving.create({"input": [{"type": "computer_call"}]}, "r2"))
    assert e.value.status == 400 and e.value.message.startswith("input[0].type:")


def test_responses_max_output_tokens_is_incomplete(hf_tok):
    serving, _ = responses(hf_tok, "one two three four five six seven")
    answer = run(serving.create({"input": "count", "max_output_tokens": 2}, "r1"))
    assert answer["status"] == "incomplete" and answer["incomplete_details"] == {"reason": "max_output_tokens"}
    events = events_of(serving.stream({"input": "count", "max_output_tokens": 2, "stream": True}, "r2"))
    assert events[-1][0] == "response.incomplete"


def test_responses_error_after_start_is_an_error_event(hf_tok):
    serving, _ = responses(hf_tok, "word " * 20, fail_after=3, fail_with=EngineError("device fell over"))
    events = events_of(serving.stream({"input": "x", "stream": True}, "r1"))
    assert [k for k, _ in events[-2:]] == ["error", "response.failed"]
    assert events[-1][1]["response"]["status"] == "failed"
    with pytest.raises(ValidationFailure) as e:
        run(serving.create({"input": "x"}, "r2"))
    assert e.value.status == 424


# ------------------------------------------------------------------------------------ Messages

def messages(hf_tok, script, **kw):
    chat, engine = make_chat(hf_tok, script, **kw)
    return MessagesServing(chat, signer=ThinkingSigner(b"k" * 32)), engine


def mbody(**kw):
    return {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "weather?"}], **kw}


@pytest.mark.parametrize("split", SPLITS)
def test_messages_tool_use_stream_equals_create(hf_tok, split):
    serving, _ = messages(hf_tok, "<think>Use the tool.</think>" + CALLS_TEXT, reasoning=True, tokens_per_step=split)
    answer = run(serving.create(mbody(tools=A_TOOLS), "r1"))
    assert [b["type"] for b in answer["content"]] == ["thinking", "text", "tool_use", "tool_use"]
    assert answer["stop_reason"] == "tool_use" and answer["content"][2]["input"] == {"city": "Paris 巴黎"}
    assert serving.signer.verify(answer["content"][0]["thinking"], answer["content"][0]["signature"])

    events = events_of(serving.stream(mbody(tools=A_TOOLS, stream=True), "r2"))
    kinds = [k for k, _ in events]
    assert kinds[:2] == ["message_start", "ping"] and kinds[-2:] == ["message_delta", "message_stop"]
    assert events[0][1]["message"]["usage"]["input_tokens"] > 0
    assert events[-2][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    blocks: dict[int, dict] = {}
    for k, e in events:
        if k == "content_block_start":
            blocks[e["index"]] = dict(e["content_block"], partial="")
        elif k == "content_block_delta":
            d, b = e["delta"], blocks[e["index"]]
            key = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial",
                   "signature_delta": "signature"}[d["type"]]
            b[key] = b.get(key, "") + d[{"input_json_delta": "partial_json"}.get(d["type"], key)]
    streamed = []
    for i in sorted(blocks):
        b = blocks[i]
        if b["type"] == "tool_use":
            b["input"] = json.loads(b["partial"])
        b.pop("partial")
        streamed.append({**b, "id": answer["content"][i].get("id")} if b["type"] == "tool_use" else b)
    assert streamed == answer["content"][:2] + [dict(c, id=c["id"]) for c in answer["content"][2:]]
    assert kinds.count("content_block_stop") == 4


def test_messages_thinking_signature_round_trips(hf_tok):
    serving, engine = messages(hf_tok, "<think>Because.</think>Yes.", reasoning=True)
    answer = run(serving.create(mbody(), "r1"))
    turn = [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": answer["content"]},
            {"role": "user", "content": "why?"}]
    run(serving.create(mbody(messages=turn), "r2"))
    assert "Yes." in hf_tok.decode(engine.calls[-1][0])
    forged = [dict(b, thinking="Something else.") if b["type"] == "thinking" else b for b in answer["content"]]
    with pytest.raises(ValidationFailure) as e:
        run(serving.create(mbody(messages=[turn[0], {"role": "assistant", "content": forged}, turn[2]]), "r3"))
    assert e.value.status == 400 and e.value.message.startswith("messages[1].content[0].signature:")


def test_messages_stop_reasons(hf_tok):
    serving, _ = messages(hf_tok, "alpha beta gamma delta")
    assert run(serving.create(mbody(), "r1"))["stop_reason"] == "end_turn"
    hit = run(serving.create(mbody(stop_sequences=["gamma"]), "r2"))
    assert (hit["stop_reason"], hit["stop_sequence"], hit["content"][0]["text"]) == ("stop_sequence", "gamma",
                                                                                     "alpha beta ")
    cut = run(serving.create(mbody(max_tokens=1), "r3"))
    assert cut["stop_reason"] == "max_tokens" and cut["usage"]["output_tokens"] == 1


def test_messages_tool_result_and_count_tokens(hf_tok):
    serving, engine = messages(hf_tok, "It is sunny.")
    turn = [{"role": "user", "content": "weather in Oslo?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                               "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "12 C"}]}]
    answer = run(serving.create(mbody(messages=turn, tools=A_TOOLS, system="Be brief."), "r1"))
    assert answer["content"] == [{"type": "text", "text": "It is sunny."}] and answer["stop_reason"] == "end_turn"
    prompt_ids = engine.calls[-1][0]
    counted = run(serving.count_tokens({"model": MODEL, "messages": turn, "tools": A_TOOLS, "system": "Be brief."},
                                       "c1"))
    assert counted == {"input_tokens": len(prompt_ids)}
    with pytest.raises(ValidationFailure) as e:
        run(serving.create({"model": MODEL, "messages": turn}, "r2"))
    assert (e.value.status, e.value.message) == (400, "max_tokens: field required")
    with pytest.raises(ValidationFailure) as e:
        run(serving.create(mbody(model="claude-x"), "r3"))
    assert e.value.status == 404


@pytest.mark.parametrize("api", ["responses", "messages"])
def test_client_disconnect_aborts_the_engine_request(hf_tok, api):
    if api == "responses":
        serving, engine = responses(hf_tok, "word " * 200, step_delay=0.001)
        agen = serving.stream({"input": "x", "stream": True}, "r1")
    else:
        serving, engine = messages(hf_tok, "word " * 200, step_delay=0.001)
        agen = serving.stream(mbody(stream=True, max_tokens=500), "r1")

    async def go():
        for _ in range(5):
            await agen.__anext__()
        await agen.aclose()          # what the handler does when the client goes away
        assert engine.aborted == ["r1"]
    run(go())
