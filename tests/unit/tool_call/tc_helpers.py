"""Helpers shared by the tool-call tests: run a stream over a partition, assemble deltas, render calls per family."""
from __future__ import annotations

import json
import random
from pathlib import Path

from mindie_like.tool_call import ToolsCallProcessorManager
from mindie_like.tool_call.families import (
    DS_CALL_BEGIN, DS_CALL_END, DS_CALLS_BEGIN, DS_CALLS_END, DS_SEP, DSML_CALLS_BEGIN, DSML_CALLS_END,
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


# ---------------------------------------------------------------- rendering calls in each family's format
def _j(v) -> str:
    return json.dumps(v, ensure_ascii=False)


def _coder_value(v) -> str:
    return v if isinstance(v, str) else _j(v)


def render(family: str, calls, before: str = "", between: str = "", after: str = "", variant: int = 0) -> str:
    """Text a model of `family` writes for `calls` [(name, args)], with content around them."""
    parts = []
    if family in ("qwen2_5", "qwen3"):
        parts = [f'<tool_call>\n{{"name": {_j(n)}, "arguments": {_j(a)}}}\n</tool_call>' for n, a in calls]
    elif family == "qwen3_coder":
        for n, a in calls:
            ps = "".join(f"<parameter={k}>\n{_coder_value(v)}\n</parameter>\n" for k, v in a.items())
            parts.append(f"<tool_call>\n<function={n}>\n{ps}</function>\n</tool_call>")
    elif family == "llama3":
        objs = [f'{{"name": {_j(n)}, "parameters": {_j(a)}}}' for n, a in calls]
        if variant:
            return before + "".join("<|python_tag|>" + o for o in objs) + after
        return before + "; ".join(objs) + after
    elif family == "mistral":
        if variant:
            return before + "".join(f"[TOOL_CALLS]{n}{_j(a)}" for n, a in calls) + after
        return before + "[TOOL_CALLS] [" + ", ".join(f'{{"name": {_j(n)}, "arguments": {_j(a)}}}'
                                                      for n, a in calls) + "]" + after
    elif family == "deepseek_v3":
        body = "".join(f"{DS_CALL_BEGIN}function{DS_SEP}{n}\n```json\n{_j(a)}\n```{DS_CALL_END}" for n, a in calls)
        return before + DS_CALLS_BEGIN + body + DS_CALLS_END + after
    elif family == "deepseek_v31":
        body = "".join(f"{DS_CALL_BEGIN}{n}{DS_SEP}{_j(a)}{DS_CALL_END}" for n, a in calls)
        return before + DS_CALLS_BEGIN + body + DS_CALLS_END + after
    elif family == "deepseek_v32":
        inv = []
        for n, a in calls:
            ps = "".join(f'<｜DSML｜parameter name="{k}" string="{"true" if isinstance(v, str) else "false"}">'
                         f"{v if isinstance(v, str) else _j(v)}</｜DSML｜parameter>\n" for k, v in a.items())
            inv.append(f'<｜DSML｜invoke name="{n}">\n{ps}</｜DSML｜invoke>\n')
        return before + DSML_CALLS_BEGIN + "\n" + "".join(inv) + DSML_CALLS_END + after
    elif family == "glm4":
        segs = [f"{n}\n{_j(a)}" for n, a in calls]
        return (before + "<|assistant|>" if before else "") + "<|assistant|>".join(segs) + after
    elif family == "chatglm3":
        segs = []
        for n, a in calls:
            kw = ", ".join(f"{k}={v!r}" for k, v in a.items())
            segs.append(f"{n}\n```python\ntool_call({kw})\n```")
        return (before + "<|assistant|>" if before else "") + "<|assistant|>".join(segs) + after
    elif family == "qwen1_5_or_2":
        parts = [f"✿FUNCTION✿: {n}\n✿ARGS✿: {_j(a)}\n" for n, a in calls]
    elif family == "kimi_k2":
        body = "".join(f"<|tool_call_begin|>functions.{n}:{i}<|tool_call_argument_begin|>{_j(a)}<|tool_call_end|>"
                       for i, (n, a) in enumerate(calls))
        return before + "<|tool_calls_section_begin|>" + body + "<|tool_calls_section_end|>" + after
    elif family in ("glm45", "glm47"):
        nl = "\n" if family == "glm45" else ""
        for n, a in calls:
            ps = "".join(f"<arg_key>{k}</arg_key>{nl}<arg_value>{_coder_value(v)}</arg_value>{nl}" for k, v in a.items())
            parts.append(f"<tool_call>{n}{nl}{ps}</tool_call>")
    elif family == "minimax_m2":
        inv = []
        for n, a in calls:
            ps = "".join(f'<parameter name="{k}">{_coder_value(v)}</parameter>\n' for k, v in a.items())
            inv.append(f'<invoke name="{n}">\n{ps}</invoke>\n')
        return before + "<minimax:tool_call>\n" + "".join(inv) + "</minimax:tool_call>" + after
    elif family == "seed_oss":
        for n, a in calls:
            ps = "".join(f"<parameter={k}>{_coder_value(v)}</parameter>\n" for k, v in a.items())
            parts.append(f"<seed:tool_call>\n<function={n}>\n{ps}</function>\n</seed:tool_call>")
    elif family == "gpt_oss":
        parts = [f"<|start|>assistant<|channel|>commentary to=functions.{n} <|constrain|>json<|message|>{_j(a)}"
                 "<|call|>" for n, a in calls]
    elif family in ("pythonic", "llama4_pythonic"):
        items = ", ".join(f"{n}({', '.join(f'{k}={v!r}' for k, v in a.items())})" for n, a in calls)
        if family == "llama4_pythonic" and not variant:
            return before + f"<|python_start|>[{items}]<|python_end|>" + after
        return before + f"[{items}]" + after
    else:
        raise ValueError(family)
    return before + between.join(parts) + after
