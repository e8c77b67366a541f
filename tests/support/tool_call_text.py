"""The text a model of each tool-call family writes for calls [(name, args)]: one writer, used by the tool-call
parser tests (tests/unit/tool_call, the fuzz properties) and by the guided-decoding tests (that text must pass the
family's grammar token by token)."""
from __future__ import annotations

import json

from mindie_like.tool_call.families import (DS_CALL_BEGIN, DS_CALL_END, DS_CALLS_BEGIN, DS_CALLS_END, DS_SEP,
                                            DSML_CALLS_BEGIN, DSML_CALLS_END)


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
    elif family == "qwen1_5_or_2":      # one call per line; nothing after the last one's arguments
        return before + ("\n" + between).join(f"✿FUNCTION✿: {n}\n✿ARGS✿: {_j(a)}" for n, a in calls) + after
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
