"""CompletionServing through the scripted fake engine."""
from __future__ import annotations

import asyncio

import pytest

from mindie_like.engine.types import EngineOverloaded, PromptLimits
from mindie_like.protocol import CompletionResponse, ValidationFailure
from mindie_like.serving import CompletionServing, ServingOptions
from tests.support.serving_fakes import FakeEngine, collect_sse

MODEL = "qwen-test"


def run(coro):
    return asyncio.run(coro)


def make(hf_tok, script=" world, and more.", options=None, **kw):
    engine = FakeEngine(hf_tok, script, **kw)
    return CompletionServing(engine, hf_tok, MODEL, options=options), engine


def test_completion_non_streaming(hf_tok):
    serving, engine = make(hf_tok)
    resp = run(serving.create({"model": MODEL, "prompt": "Hello", "max_tokens": 50, "temperature": 0}, "c1"))
    CompletionResponse.model_validate(resp)
    assert resp["object"] == "text_completion" and resp["id"] == "cmpl-c1"
    assert resp["choices"][0]["text"] == " world, and more."
    assert resp["choices"][0]["finish_reason"] == "stop" and resp["choices"][0]["logprobs"] is None
    assert engine.calls[0][0] == hf_tok.encode("Hello")
    assert engine.calls[0][1].temperature == 0 and engine.calls[0][1].max_tokens == 50
    assert resp["usage"]["prompt_tokens"] == len(hf_tok.encode("Hello"))


def test_completion_token_prompt_echo_and_logprobs(hf_tok):
    serving, engine = make(hf_tok)
    ids = hf_tok.encode("Hello")
    resp = run(serving.create({"model": MODEL, "prompt": ids, "echo": True, "logprobs": 2}, "c1"))
    ch = resp["choices"][0]
    assert ch["text"] == "Hello world, and more."
    lp = ch["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"])
    assert lp["text_offset"][0] == len("Hello") and all(len(t) <= 2 for t in lp["top_logprobs"])
    assert engine.calls[0][0] == ids and engine.calls[0][1].logprobs == 2


def test_completion_streaming_n_and_usage(hf_tok):
    serving, engine = make(hf_tok)
    events = run(collect_sse(serving.stream({"model": MODEL, "prompt": ["A", "B"], "n": 2, "stream": True,
                                             "stream_options": {"include_usage": True}, "max_tokens": 3}, "c1")))
    assert events[-1] == "[DONE]"
    usage = events[-2]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 12
    texts = {}
    finishes = {}
    for ev in events[:-2]:
        for ch in ev["choices"]:
            texts[ch["index"]] = texts.get(ch["index"], "") + ch["text"]
            if ch["finish_reason"]:
                finishes[ch["index"]] = ch["finish_reason"]
    assert sorted(texts) == [0, 1, 2, 3] and finishes == {i: "length" for i in range(4)}
    assert texts[0] == hf_tok.decode(hf_tok.encode(" world, and more.")[:3])
    assert sorted(c[2] for c in engine.calls) == ["c1-0", "c1-1", "c1-2", "c1-3"]
    assert [c[0] for c in engine.calls[:2]] == [hf_tok.encode("A")] * 2


def test_completion_errors(hf_tok):
    serving, _ = make(hf_tok)
    with pytest.raises(ValidationFailure) as e:
        run(serving.create({"model": "other", "prompt": "x"}, "c1"))
    assert e.value.status == 422 and "Model not found" in e.value.message
    with pytest.raises(ValidationFailure) as e:
        run(serving.create({"model": MODEL, "prompt": [10**9]}, "c1"))
    assert e.value.status == 422 and e.value.message.startswith("prompt: token id 1000000000 is not in")
    serving, _ = make(hf_tok, refuse=EngineOverloaded("full"))
    with pytest.raises(ValidationFailure) as e:
        run(serving.create({"model": MODEL, "prompt": "x"}, "c1"))
    assert e.value.status == 503
    serving, _ = make(hf_tok, "a b c d e f", fail_after=2)
    events = run(collect_sse(serving.stream({"model": MODEL, "prompt": "x", "stream": True}, "c1")))
    assert events[-2] == {"error": "device fell over", "error_type": "Generation Error"} and events[-1] == "[DONE]"
    serving, _ = make(hf_tok, options=ServingOptions(limits=PromptLimits(max_input_len=2)))
    with pytest.raises(ValidationFailure) as e:
        run(serving.create({"model": MODEL, "prompt": "one two three four"}, "c1"))
    assert e.value.status == 422 and "maxInputTokenLen" in e.value.message


def test_completion_stop_string(hf_tok):
    serving, _ = make(hf_tok, " alpha beta STOP gamma")
    resp = run(serving.create({"model": MODEL, "prompt": "x", "stop": "STOP"}, "c1"))
    assert resp["choices"][0]["text"] == " alpha beta " and resp["choices"][0]["finish_reason"] == "stop"
