"""Every vector of tests/data/fixtures/tool_call_vectors_2026.json (kimi_k2, glm45/47, minimax_m2, gpt_oss,
seed_oss, pythonic, ...): batch, every two-piece split of its text, one character at a time, random partitions
and the peer's own `stream_chunks`; compared as that folder's README says."""
from __future__ import annotations

import json

import pytest

from mindie_like.reasoning import ChatOutputParser
from tc_helpers import FIXTURES, assemble, partitions, proc

VECTORS = json.loads((FIXTURES / "tool_call_vectors_2026.json").read_text(encoding="utf-8"))
IDS = [v["id"] for v in VECTORS]
# markup that must not be left in content once a call parsed
MARKUP = ("<tool_call>", "</tool_call>", "<|tool_call", "<minimax:tool_call>", "<invoke", "<parameter",
          "<seed:tool_call>", "<function=", "<arg_key>", "<arg_value>", "<|channel|>", "<|message|>",
          "<|python_start|>", "<｜tool▁", "to=functions.")


def _alias(v) -> str:
    return v.get("alias") or v["family"]


def _parser(v) -> ChatOutputParser:
    """The chat route's parser: reasoning split where the vector asserts some reasoning (an empty expected
    reasoning is an output the peer parsed with nothing reasoned); the tools the test gave, or none (the peers'
    parsers built without tools parse every call, whatever its name)."""
    return ChatOutputParser(processor=proc(_alias(v)), tools=v.get("tools"), parse_tools=True,
                            reasoning=bool(v.get("expected_reasoning")))


def _decode(v) -> dict:
    return _parser(v).parse(v["model_output"])


def _stream(v, chunks) -> dict:
    par = _parser(v)
    stream = par.new_stream()
    deltas = []
    for c in chunks:
        deltas += stream.feed(c)
    deltas += stream.finish()
    reasoning = "".join(d.pop("reasoning_content") for d in deltas if "reasoning_content" in d)
    content, calls = assemble([d for d in deltas if d])
    return {"reasoning_content": reasoning if par.reasoning else None, "content": content, "calls": calls}


def _calls(res) -> list:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in res["tool_calls"]]


def _check(v, res):
    exp = [(c["name"], c["arguments"]) for c in v["expected_tool_calls"]]
    assert _calls(res) == exp
    for got, want in zip(res["tool_calls"], v["expected_tool_calls"]):
        if "id" in want:
            assert got["id"] == want["id"]
    content = res["content"] or ""
    if v.get("expected_reasoning") is not None:
        assert (res["reasoning_content"] or "").strip() == v["expected_reasoning"].strip()
        assert content.strip() == (v["expected_content"] or "").strip()
    elif not exp:
        assert content == v["model_output"]
    else:
        want = (v["expected_content"] or "").strip()
        assert want in content
        rest = content.replace(want, "")
        assert not any(m in rest for m in MARKUP), content


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_vector_batch(v):
    _check(v, _decode(v))


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_vector_every_split(v):
    """Streaming gives the batch result for every split point, one character at a time, random partitions and
    the peer's own chunks; the deltas assemble to it."""
    batch = _decode(v)
    want = {"reasoning_content": batch["reasoning_content"], "content": batch["content"],
            "calls": [[c["function"]["name"], c["function"]["arguments"]] for c in batch["tool_calls"]]}
    text = v["model_output"]
    splits = [[text[:i], text[i:]] for i in range(1, len(text))] + [list(text)]
    splits += list(partitions(text, 20, 7))
    if v.get("stream_chunks"):
        assert "".join(v["stream_chunks"]) == text
        splits.append(v["stream_chunks"])
    for chunks in splits:
        got = _stream(v, chunks)
        got["calls"] = [list(c) for c in got["calls"]]
        assert got == want, chunks
