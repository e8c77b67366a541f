"""Helpers shared by the tool-call tests: run a stream over a partition, assemble deltas (the text each family
writes: tests.support.tool_call_text.render)."""
from __future__ import annotations

import json
import random
from pathlib import Path

from mindie_like.tool_call import ToolsCallProcessorManager
from mindie_like.tool_call.families import (
    DS_CALL_BEGIN, DS_CALL_END, DS_CALLS_BEGIN, DS_CALLS_END, DS_SEP, DSML_CALLS_BEGIN, DSML_CALLS_END, DSML_INVOKE,
    DSML_INVOKE_END, DSML_PARAM, DSML_PARAM_END,
)

FIXTURES = Path(__file__).resolve().parents[2] / "data" / "fixtures"
VECTORS = json.loads((FIXTURES / "tool_call_vectors.json").read_text(encoding="utf-8"))

ALL_FAMILIES = ("passthrough", "chatglm2", "chatglm3", "glm4", "deepseek_v3", "deepseek_v31", "deepseek_v32",
                "llama3", "qwen1_5_or_2", "qwen2_5", "qwen3", "qwen3_coder", "mistral")
# the families of 2025-2026 (their own fixture file too): the generic rules run over them as well
NEW_FAMILIES = ("kimi_k2", "glm45", "glm47", "minimax_m2", "gpt_oss", "seed_oss", "pythonic", "llama4_pythonic")
# arguments written parameter by parameter: without a schema their values are strings (GLM's are read as JSON)
XML_FAMILIES = ("qwen3_coder", "deepseek_v32", "minimax_m2", "seed_oss")
TOOL_FAMILIES = tuple(f for f in ALL_FAMILIES if f not in ("passthrough", "chatglm2")) + NEW_FAMILIES
MARKERS_TEXT = ("<tool_call>", "</tool_call>", "[TOOL_CALLS]", DS_CALL_END, "<|python_tag|>", "✿FUNCTION✿",
                "<|assistant|>", "```json")


def proc(family: str):
    return ToolsCallProcessorManager.get_tool_call_processor(family)()


def tools_for(calls, types: dict | None = None) -> list[dict]:
    """An OpenAI tool list declaring the names of `calls` (name, args) with a schema typed from the args."""
    seen: dict[str, dict] = {}
    for name, args in calls:
        props = seen.setdefault(name, {})
        for k, v in args.items():
            props[k] = {"type": _json_type(v)}
    return [{"type": "function", "function": {"name": n, "description": "", "parameters":
                                              {"type": "object", "properties": p}}} for n, p in seen.items()]


def _json_type(v) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if v is None:
        return "null"
    return "object"


def run_stream(p, chunks, tools=None, lenient=True):
    s = p.new_stream(tools, lenient=lenient)
    deltas = []
    for c in chunks:
        deltas += s.feed(c)
    deltas += s.finish()
    return s, deltas


def assemble(deltas):
    """Deltas -> (content, [(name, arguments)]); checks the delta shapes on the way."""
    content = []
    calls: dict[int, list] = {}
    for d in deltas:
        assert len(d) == 1, d
        if "content" in d:
            assert isinstance(d["content"], str) and d["content"], d
            content.append(d["content"])
            continue
        (tc,) = d["tool_calls"]
        i = tc["index"]
        if "id" in tc:
            assert i not in calls and i == len(calls), (i, calls)
            assert tc["type"] == "function" and tc["function"]["arguments"] == ""
            assert isinstance(tc["function"]["name"], str) and tc["function"]["name"]
            calls[i] = [tc["function"]["name"], ""]
        else:
            assert set(tc) == {"index", "function"} and set(tc["function"]) == {"arguments"}, tc
            assert tc["function"]["arguments"], tc
            calls[i][1] += tc["function"]["arguments"]
    return "".join(content), [tuple(calls[i]) for i in sorted(calls)]


def calls_of(result) -> list[tuple[str, str]]:
    return [(c["function"]["name"], c["function"]["arguments"]) for c in result["tool_calls"]]


def partitions(text: str, n: int, seed: int):
    rng = random.Random(seed)
    for _ in range(n):
        k = rng.randint(1, max(1, min(len(text), 12)))
        cuts = sorted(rng.sample(range(1, len(text)), min(k, max(0, len(text) - 1)))) if len(text) > 1 else []
        bounds = [0] + cuts + [len(text)]
        yield [text[a:b] for a, b in zip(bounds, bounds[1:])]


def check_split_invariance(p, text, tools=None, lenient=True, n=200, seed=1234, strict_deltas=True):
    """Every partition gives decode's result; strict_deltas: the deltas alone assemble to it as well."""
    expected = p.decode(text, tools, lenient=lenient)
    exp_calls = calls_of(expected)
    splits = [[text], list(text)] + list(partitions(text, n, seed))
    for chunks in splits:
        s, deltas = run_stream(p, chunks, tools, lenient)
        content, calls = assemble(deltas)
        assert content == expected["content"], (chunks, content, expected)
        assert calls_of(s.result()) == exp_calls, (chunks, s.result(), expected)
        if strict_deltas:
            assert calls == exp_calls, (chunks, calls, exp_calls)
    return expected


# markup fragments of every family, joined at random by the fuzz properties
FUZZ_PIECES = [
    "<tool_call>", "</tool_call>", "[TOOL_CALLS]", "[ARGS]", "<|python_tag|>", "<|assistant|>", "✿FUNCTION✿",
    "✿ARGS✿", "✿RESULT✿", DS_CALLS_BEGIN, DS_CALL_BEGIN, DS_SEP, DS_CALL_END, DS_CALLS_END, DSML_CALLS_BEGIN,
    DSML_INVOKE, ' name="f">', DSML_PARAM, DSML_PARAM_END, DSML_INVOKE_END, "<function=f>", "<parameter=a>",
    "</parameter>", "</function>", "```json\n", "```", '{"name": "f", "arguments": {"a": 1}}',
    '{"name": "f", "parameters": {', '"name"', '"arguments"', ": ", ", ", "{", "}", "[", "]", '"', "\\",
    "f\n", "function", "\n", " ", ";", "tool_call(a=1)", "杭州😀", "x", "1", "null", "tru",
    '{"type": "function", "function": ', '"description": "d", ', '{"a": ', '"name": "f"']
