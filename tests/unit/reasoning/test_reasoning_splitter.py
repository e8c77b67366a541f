"""<think> splitting, its streaming form, and reasoning -> tool-call composition."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mindie_like.reasoning import ChatOutputParser, ReasoningStream, split_reasoning
from mindie_like.tool_call import ToolsCallProcessorManager

WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
TC = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def qwen3():
    return ToolsCallProcessorManager.get_tool_call_processor("qwen3")()


@pytest.mark.parametrize("text,reasoning,content", [
    ("<think>I think.</think>Answer.", "I think.", "Answer."),
    ("I think.</think>\n\nAnswer.", "I think.", "Answer."),    # template already opened <think>
    ("\n<think>\nhmm\n</think>\n ok ", "\nhmm\n", "ok "),          # blank after </think> is a separator
    ("still thinking, cut off", "still thinking, cut off", ""),          # no </think>: all reasoning
    ("<think></think>", "", ""),
    ("a</think>b</think>c", "a", "b</think>c"),
])
def test_split(text, reasoning, content):
    assert split_reasoning(text)[:2] == (reasoning, content)
    res = ChatOutputParser(reasoning=True).parse(text)
    assert res == {"reasoning_content": reasoning, "content": content, "tool_calls": []}


def _stream(parser, chunks):
    s = parser.new_stream()
    deltas, flags = [], []
    for c in chunks:
        deltas += s.feed(c)
        flags.append(s.in_reasoning)
    deltas += s.finish()
    r = "".join(d.get("reasoning_content", "") for d in deltas)
    c = "".join(d.get("content", "") for d in deltas)
    calls = {}
    for d in deltas:
        for tc in d.get("tool_calls", []):
            if "id" in tc:
                calls[tc["index"]] = [tc["function"]["name"], ""]
            else:
                calls[tc["index"]][1] += tc["function"]["arguments"]
    return r, c, [tuple(v) for _, v in sorted(calls.items())], flags


def test_tool_calls_only_in_content_never_in_reasoning():
    parser = ChatOutputParser(processor=qwen3(), tools=WEATHER, reasoning=True)
    text = "<think>maybe " + TC + " no</think>\nOK. " + TC
    res = parser.parse(text)
    assert res["reasoning_content"] == "maybe " + TC + " no"
    assert res["content"] == "OK." and len(res["tool_calls"]) == 1
    rng = random.Random(7)
    for _ in range(100):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, 15)))
        chunks = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        r, c, calls, _ = _stream(parser, chunks)
        assert (r, c) == (res["reasoning_content"], res["content"])
        assert calls == [("get_weather", '{"city": "Paris"}')]


def test_in_reasoning_flag_per_token():
    parser = ChatOutputParser(processor=qwen3(), tools=WEATHER, reasoning=True)
    tokens = ["<think>", "a", "b", "</th", "ink>", "Hello"]
    *_, flags = _stream(parser, tokens)
    assert flags == [True, True, True, True, False, False]


def test_tools_off_means_all_content():
    for parser in (ChatOutputParser(processor=qwen3(), tools=None), ChatOutputParser(processor=None, tools=WEATHER)):
        assert parser.parse(TC) == {"reasoning_content": None, "content": TC, "tool_calls": []}
        r, c, calls, flags = _stream(parser, list(TC))
        assert c == TC and calls == [] and not any(flags)


def test_reasoning_off_keeps_think_tags_as_content():
    res = ChatOutputParser(reasoning=False).parse("<think>x</think>y")
    assert res == {"reasoning_content": None, "content": "<think>x</think>y", "tool_calls": []}


@settings(max_examples=150, deadline=None, derandomize=True)
@given(text=st.lists(st.sampled_from(["<think>", "</think>", "<th", "ink>", "</", " ", "\n", "a", "b", TC]),
                     max_size=12).map("".join),
       cuts=st.lists(st.integers(1, 200), max_size=8))
def test_stream_equals_batch(text, cuts):
    parser = ChatOutputParser(processor=qwen3(), tools=WEATHER, reasoning=True)
    res = parser.parse(text)
    bounds = [0] + sorted(set(c for c in cuts if c < len(text))) + [len(text)]
    r, c, calls, _ = _stream(parser, [text[a:b] for a, b in zip(bounds, bounds[1:])])
    assert r == (res["reasoning_content"] or "") and c == res["content"]
    assert calls == [(t["function"]["name"], t["function"]["arguments"]) for t in res["tool_calls"]]


def test_reasoning_stream_holds_partial_close_tag():
    s = ReasoningStream()
    assert s.feed("abc</thi") == ("abc", "")
    assert s.feed("nk>rest") == ("", "rest")
    assert not s.in_reasoning
