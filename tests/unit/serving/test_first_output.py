"""The first visible output of a streamed chat answer arrives at the earliest token it can, with tools declared and
tool_choice "auto": ChatServing with the real tool-call processors and ChatOutputParser, fed one token per step
by the scripted engine (as the engine steps), each chunk stamped with the tokens generated so far
(stream_options.continuous_usage_stats). The earliest token is the documented rule, written independently in
tests.support.first_output; the answers are the demo model's own to the benchmark's prompts. At every token the
content sent so far is exactly what the rule allows (never later, never earlier), a call's header goes out at the
token that starts its arguments, and the stream reassembles to the non-streamed answer."""
from __future__ import annotations

import asyncio

import pytest

from benchmarks.loadgen import WEATHER_TOOLS, chat_messages
from mindie_like.reasoning import ChatOutputParser
from mindie_like.serving import ChatServing, ServingOptions
from mindie_like.tool_call import ToolsCallProcessorManager
from tests.support.family_scripts import CONTENT, FAMILIES, TOOLS
from tests.support.first_output import DEMO_ANSWERS, header_char, releasable, token_of
from tests.support.serving_fakes import FakeEngine, collect_sse, reassemble

MODEL = "m"
CALL_ANSWERS = ("bare_call", "bare_call_2", "fenced_call", "hermes_call", "prose_then_call")
CONTENT_ANSWERS = {name: DEMO_ANSWERS[name] for name in ("code", "prose", "sql")}
# JSON objects in prose are no call (their first key is not "name"): released as they are written too
CONTENT_ANSWERS["json_in_prose"] = (2, 'Send `{"city": "Paris", "unit": "celsius"}` as the body:\n\n```python\n'
                                       'get_weather(**{"city": "Paris"})\n```')


def serving_for(hf_tok, alias: str, text: str, eos: str = "<|im_end|>"):
    proc = ToolsCallProcessorManager.get_tool_call_processor(alias)(tokenizer=None)
    return ChatServing(FakeEngine(hf_tok, text, eos=eos), hf_tok, MODEL, tool_processor=proc,
                       output_parser_cls=ChatOutputParser, options=ServingOptions())


def by_token(serving, body: dict):
    """(events, [(completion tokens when sent, delta)] for the chunks that carry output)."""
    body = dict(body, stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True})
    events = asyncio.run(collect_sse(serving.stream(body, "r1")))
    out = []
    for ev in events:
        if ev == "[DONE]" or not ev.get("choices"):
            continue
        d = ev["choices"][0]["delta"]
        if d.get("content") or d.get("tool_calls"):
            out.append((ev["usage"]["completion_tokens"], d))
    return events, out


def prefixes(hf_tok, text: str) -> list[str]:
    """The text the model has written after each of its tokens."""
    ids = hf_tok.encode(text, add_special_tokens=False)
    return [hf_tok.decode(ids[:k]) for k in range(1, len(ids) + 1)]


def content_until(sent, k: int) -> str:
    return "".join(d.get("content") or "" for t, d in sent if t <= k)


def demo_body(prompt: int) -> dict:
    return {"model": MODEL, "messages": chat_messages(prompt), "tools": WEATHER_TOOLS, "tool_choice": "auto"}


@pytest.mark.parametrize("name", CONTENT_ANSWERS)
def test_content_is_sent_at_the_token_that_writes_it(hf_tok, name):
    prompt, text = CONTENT_ANSWERS[name]
    serving = serving_for(hf_tok, "qwen2_5", text)
    events, sent = by_token(serving, demo_body(prompt))
    pre = prefixes(hf_tok, text)
    assert sent[0][0] == 1                     # the first token is already visible
    for k, p in enumerate(pre, 1):
        assert content_until(sent, k) == releasable(p), (k, p)
    final = asyncio.run(serving.create(demo_body(prompt), "r2"))["choices"][0]["message"]
    assert reassemble(events)["content"] == final["content"] == text and not final["tool_calls"]


@pytest.mark.parametrize("name", CALL_ANSWERS)
def test_call_header_is_sent_at_the_token_that_starts_its_arguments(hf_tok, name):
    prompt, text = DEMO_ANSWERS[name]
    serving = serving_for(hf_tok, "qwen2_5", text)
    events, sent = by_token(serving, demo_body(prompt))
    pre = prefixes(hf_tok, text)
    k_head = token_of(pre, header_char(text))
    heads = [(t, d) for t, d in sent if d.get("tool_calls") and "id" in d["tool_calls"][0]]
    assert len(heads) == 1 and heads[0][0] == k_head, (heads, k_head, pre[k_head - 1])
    for k in range(1, k_head):                 # before the call: its prose, as soon as it is written
        assert content_until(sent, k) == releasable(pre[k - 1]), (k, pre[k - 1])
        assert not any(d.get("tool_calls") for t, d in sent if t <= k)
    # the arguments follow token by token: every token from the header to the call's end adds to them
    final = asyncio.run(serving.create(demo_body(prompt), "r2"))["choices"][0]["message"]
    args = final["tool_calls"][0]["function"]["arguments"]
    end = token_of(pre, text.index(args[-3:] if name != "fenced_call" else '"celsius"') + 3)
    arg_tokens = {t for t, d in sent if d.get("tool_calls") and d["tool_calls"][0]["function"].get("arguments")}
    assert len(arg_tokens) >= (end - k_head) // 2 >= 3, (sorted(arg_tokens), k_head, end)
    msg = reassemble(events)
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in msg["tool_calls"]] == \
        [(c["function"]["name"], c["function"]["arguments"]) for c in final["tool_calls"]]
    assert msg["content"] == final["content"] and msg["finish_reason"] == "tool_calls"


# every family whose answer starts with prose: the prose goes out token by token before its calls
PROSE_FIRST = sorted(n for n, f in FAMILIES.items() if f.text.startswith(CONTENT))


@pytest.mark.parametrize("case", PROSE_FIRST)
def test_every_family_sends_prose_before_its_calls_at_once(hf_tok, case):
    fam = FAMILIES[case]
    serving = serving_for(hf_tok, fam.parser, fam.text, fam.eos)
    events, sent = by_token(serving, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                      "tools": TOOLS})
    pre = prefixes(hf_tok, fam.text)
    assert sent[0][0] == 1
    for k, p in enumerate(pre, 1):
        if len(p) >= len(CONTENT):
            break
        assert content_until(sent, k) == p.rstrip(), (case, k, p)
    assert reassemble(events)["content"].strip() == CONTENT
