"""Every validation error: status 422, error_type, and the exact message naming parameter, range and value."""
from __future__ import annotations

import pytest

from mindie_like.protocol import (ValidationFailure, parse_chat_request, parse_completion_request)

M = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def chat(**kw):
    d = {"model": "m", "messages": M}
    d.update(kw)
    return d


CASES = [
    (chat(temperature=-1), "temperature: -1 is not in [0, inf)"),
    (chat(temperature=-0.5), "temperature: -0.5 is not in [0, inf)"),
    (chat(temperature=float("inf")), "temperature: inf is not in [0, inf)"),
    (chat(temperature=float("nan")), "temperature: NaN is not in [0, inf)"),
    (chat(temperature="1"), 'temperature: Input should be a valid number, got "1"'),
    (chat(top_p=0), "top_p: 0 is not in (0, 1]"),
    (chat(top_p=1.5), "top_p: 1.5 is not in (0, 1]"),
    (chat(top_k=0), "top_k: 0 is not -1 or in [1, 2147483647]"),
    (chat(top_k=-2), "top_k: -2 is not -1 or in [1, 2147483647]"),
    (chat(min_p=2), "min_p: 2 is not in [0, 1]"),
    (chat(repetition_penalty=0), "repetition_penalty: 0 is not in (0, 2]"),
    (chat(repetition_penalty=2.5), "repetition_penalty: 2.5 is not in (0, 2]"),
    (chat(presence_penalty=3), "presence_penalty: 3 is not in [-2, 2]"),
    (chat(frequency_penalty=-2.1), "frequency_penalty: -2.1 is not in [-2, 2]"),
    (chat(max_tokens=0), "max_tokens: 0 is not in [1, 2147483647]"),
    (chat(max_tokens=2**31), "max_tokens: 2147483648 is not in [1, 2147483647]"),
    (chat(max_tokens=1.5), "max_tokens: Input should be a valid integer, got 1.5"),
    (chat(max_completion_tokens=-1), "max_completion_tokens: -1 is not in [1, 2147483647]"),
    (chat(n=0), "n: 0 is not in [1, 4]"),
    (chat(n=5), "n: 5 is not in [1, 4]"),
    (chat(seed=-1), "seed: -1 is not in [0, 18446744073709551615]"),
    (chat(top_logprobs=21, logprobs=True), "top_logprobs: 21 is not in [0, 20]"),
    (chat(top_logprobs=2), "top_logprobs: top_logprobs needs logprobs: true"),
    (chat(logprobs=3), "logprobs: Input should be a valid boolean, got 3"),
    (chat(stop=[""]), "stop: stop strings may not be empty"),
    (chat(stop="a" * 1025), "stop: a stop string of 1025 characters is longer than 1024"),
    (chat(stop=["a"] * 1025), "stop: 1025 stop strings is more than 1024"),
    (chat(stop=5), "stop: Input should be a valid string, got 5"),
    (chat(stop_token_ids=[-1]), "stop_token_ids[0]: -1 is not in [0, 2147483647]"),
    (chat(stream="yes"), 'stream: Input should be a valid boolean, got "yes"'),
    (chat(ignore_eos=1), "ignore_eos: Input should be a valid boolean, got 1"),
    (chat(stream_options={"include_usage": "x"}), 'stream_options.include_usage: Input should be a valid boolean, got "x"'),
    ({"messages": M}, "model: field required"),
    ({"model": "m"}, "messages: field required"),
    (chat(messages=[]), "messages: must not be empty"),
    (chat(messages="hi"), 'messages: Input should be a valid list, got "hi"'),
    (chat(messages=[{"role": "bot", "content": "x"}]),
     "messages[0].role: Input should be 'system', 'user', 'assistant' or 'tool', got \"bot\""),
    (chat(messages=[{"content": "x"}]), "messages[0].role: field required"),
    (chat(messages=[{"role": "user"}]),
     "messages[0]: a user message needs 'content' (a string or a list of text parts)"),
    (chat(messages=[{"role": "user", "content": 5}]), "messages[0].content: Input should be a valid string, got 5"),
    (chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     "messages[0].content[0]: only 'text' content parts are supported, got \"image_url\""),
    (chat(messages=[{"role": "tool", "content": "r"}]), "messages[0]: a tool message needs 'tool_call_id'"),
    (chat(messages=[{"role": "user", "content": "x", "tool_calls": []}]),
     "messages[0]: only assistant messages may carry 'tool_calls'"),
    (chat(messages=[{"role": "assistant", "tool_calls": [{"type": "function", "function": {}}]}]),
     "messages[0].tool_calls[0].function.name: field required"),
    (chat(tools=[{"type": "function", "function": {"name": "a b"}}]),
     'tools[0].function.name: "a b" does not match ^[a-zA-Z0-9_-]{1,64}$'),
    (chat(tools=[{"type": "function", "function": {"name": "x" * 65}}]),
     'tools[0].function.name: "' + "x" * 65 + '" does not match ^[a-zA-Z0-9_-]{1,64}$'),
    (chat(tools=[{"type": "retrieval", "function": {"name": "a"}}]),
     "tools[0].type: Input should be 'function', got \"retrieval\""),
    (chat(tools=[TOOL, TOOL]), 'tools: function "get_weather" is declared twice'),
    (chat(tools=[{"type": "function"}]), "tools[0].function: field required"),
    (chat(tool_choice="required"), 'tool_choice: tool_choice "required" needs tools'),
    (chat(tool_choice="sometimes", tools=[TOOL]),
     'tool_choice: "sometimes" is not "none", "auto", "required" or {"type": "function", "function": {"name": ...}}'),
    (chat(tool_choice={"type": "function", "function": {"name": "nope"}}, tools=[TOOL]),
     'tool_choice: function "nope" is not among the request\'s tools'),
    (chat(tool_choice={"type": "function", "function": {"name": "get_weather"}}),
     "tool_choice: a named tool_choice needs tools"),
    (chat(parallel_tool_calls="no"), 'parallel_tool_calls: Input should be a valid boolean, got "no"'),
    (chat(response_format={"type": "xml"}),
     "response_format.type: Input should be 'text', 'json_object' or 'json_schema', got \"xml\""),
    (chat(response_format={"type": "json_schema"}), "response_format: type 'json_schema' needs json_schema.schema"),
    (chat(chat_template_kwargs=[1]), "chat_template_kwargs: Input should be a valid dictionary, got [1]"),
    (chat(separate_reasoning="true"), 'separate_reasoning: Input should be a valid boolean, got "true"'),
]


@pytest.mark.parametrize("data,message", CASES, ids=[c[1][:40] for c in CASES])
def test_chat_validation_errors(data, message):
    with pytest.raises(ValidationFailure) as e:
        parse_chat_request(data, max_n=4)
    assert e.value.status == 422
    assert e.value.error_type == "Input Validation Error"
    assert e.value.message == message
    assert e.value.to_body() == {"error": message, "error_type": "Input Validation Error"}


def test_not_an_object():
    for bad in ([], "x", None, 3):
        with pytest.raises(ValidationFailure) as e:
            parse_chat_request(bad)
        assert e.value.status == 422 and e.value.message == "request: the body must be a JSON object"


def test_valid_full_request_and_unknown_fields_ignored():
    r = parse_chat_request(chat(
        messages=[{"role": "system", "content": "s"},
                  {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                  {"role": "assistant", "content": None,
                   "tool_calls": [{"id": "call_1", "type": "function",
                                   "function": {"name": "get_weather", "arguments": '{"city": "x"}'}}]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "sunny", "name": "get_weather"},
                  {"role": "assistant", "content": ""}],
        tools=[TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False, stream=True, stream_options={"include_usage": True}, max_tokens=10,
        temperature=0, top_p=1, top_k=-1, min_p=0, seed=2**64 - 1, presence_penalty=-2, frequency_penalty=2,
        repetition_penalty=2, stop=["a", "b"], stop_token_ids=[1], ignore_eos=True, skip_special_tokens=False,
        n=4, logprobs=True, top_logprobs=20, response_format={"type": "json_object"},
        chat_template_kwargs={"enable_thinking": True}, separate_reasoning=True, include_stop_str_in_output=True,
        best_of=3, use_beam_search=False, some_future_field={"x": 1}), max_n=4)
    assert r.messages[1].text() == "a\nb"
    assert r.named_function == "get_weather" and r.effective_tool_choice["function"]["name"] == "get_weather"
    assert r.include_usage and r.num_choices == 4 and r.top_logprobs_k == 20 and r.stop == ["a", "b"]
    assert not hasattr(r, "some_future_field")
    r = parse_chat_request(chat(stop="x", max_completion_tokens=5, max_tokens=9))
    assert r.stop == ["x"] and r.effective_max_tokens == 5
    assert r.effective_tool_choice == "none" and r.top_logprobs_k is None
    r = parse_chat_request(chat(tools=[TOOL]))
    assert r.effective_tool_choice == "auto"
    r = parse_chat_request(chat(temperature=1))  # JSON integers are numbers
    assert r.temperature == 1.0


COMPLETION_CASES = [
    ({"model": "m"}, "prompt: field required"),
    ({"model": "m", "prompt": []}, "prompt: [] is not a string, a list of strings, a list of token ids or a list of "
                                   "such lists (none empty)"),
    ({"model": "m", "prompt": 5}, "prompt: 5 is not a string, a list of strings, a list of token ids or a list of "
                                  "such lists (none empty)"),
    ({"model": "m", "prompt": [1, -2]}, "prompt: token ids must be >= 0"),
    ({"model": "m", "prompt": "x", "logprobs": 21}, "logprobs: 21 is not in [0, 20]"),
    ({"model": "m", "prompt": "x", "echo": "y"}, 'echo: Input should be a valid boolean, got "y"'),
    ({"model": "m", "prompt": "x", "temperature": -1}, "temperature: -1 is not in [0, inf)"),
]


@pytest.mark.parametrize("data,message", COMPLETION_CASES, ids=[c[1][:40] for c in COMPLETION_CASES])
def test_completion_validation_errors(data, message):
    with pytest.raises(ValidationFailure) as e:
        parse_completion_request(data)
    assert (e.value.status, e.value.message) == (422, message)


def test_completion_prompt_shapes():
    assert parse_completion_request({"model": "m", "prompt": "a"}).prompts == ["a"]
    assert parse_completion_request({"model": "m", "prompt": ["a", "b"]}).prompts == ["a", "b"]
    assert parse_completion_request({"model": "m", "prompt": [1, 2]}).prompts == [[1, 2]]
    assert parse_completion_request({"model": "m", "prompt": [[1], [2, 3]]}).prompts == [[1], [2, 3]]


# ------------------------------------------------------------------------------------ arbitrary input never crashes

from hypothesis import given, settings, strategies as st  # noqa: E402

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
                    | st.text(max_size=8),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
                    max_leaves=20)
KEYS = st.sampled_from(["model", "messages", "tools", "tool_choice", "temperature", "top_p", "top_k", "n", "stop",
                        "max_tokens", "logprobs", "top_logprobs", "response_format", "stream_options", "seed",
                        "stop_token_ids", "prompt", "chat_template_kwargs", "role", "content", "function"])


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(KEYS, JSON, max_size=8), st.booleans())
def test_arbitrary_bodies_give_422_or_a_request(data, chat_route):
    data.setdefault("model", "m")
    if chat_route:
        data.setdefault("messages", [{"role": "user", "content": "x"}])
    try:
        (parse_chat_request if chat_route else parse_completion_request)(data)
    except ValidationFailure as e:
        assert e.status == 422 and e.message and "Traceback" not in e.message
