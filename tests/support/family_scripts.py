"""What a model of each tool-call family writes for one answer with two calls: one table, replayed by the
scripted engine (tests.support.serving_fakes.FakeEngine) through ChatServing in tests/unit/serving and through the
assembled server over HTTP in tests/integration/server/test_parser_wiring_http.py.

Each case: the model_type the config names, the tool_call_parser, whether the config enables reasoning, the
family's end-of-turn token, the text the model writes (markers are special tokens of
serving_fakes.load_test_tokenizer) and the content the client must get beside the calls, which are always CALLS.
"""
from __future__ import annotations

import json
import re
from typing import NamedTuple

TOOLS = [{"type": "function", "function": {"name": n, "description": d, "parameters": {
    "type": "object", "properties": p, "required": list(p)}}}
    for n, d, p in [("get_weather", "Weather of a city", {"city": {"type": "string"}, "days": {"type": "integer"}}),
                    ("get_time", "Time in a time zone", {"tz": {"type": "string"}})]]
CALLS = [("get_weather", {"city": "Paris 巴黎", "days": 3}), ("get_time", {"tz": "CET"})]
MESSAGES = [{"role": "user", "content": "Weather in Paris for 3 days, and the time in CET?"}]
CONTENT = "I will check both."
DS_B, DS_E, DS_CB, DS_CE, DS_S = ("<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>",
                                  "<｜tool▁call▁end｜>", "<｜tool▁sep｜>")
EOS_QWEN, EOS_DS, EOS_LLAMA, EOS_GLM, EOS_MISTRAL = ("<|im_end|>", "<｜end▁of▁sentence｜>", "<|eot_id|>",
                                                     "<|observation|>", "</s>")
END_OF_TURN = (EOS_QWEN, EOS_DS, EOS_LLAMA, EOS_GLM, EOS_MISTRAL, "<|endoftext|>", "<|user|>", "[e~[",
               "<|return|>", "<|call|>", "<seed:eos>", "<|eot|>")
# a family's call markers: none may be left in the content once the calls are parsed
MARKER_RE = re.compile(r"<tool_call>|</tool_call>|<\|python_tag\|>|｜tool|\[TOOL_CALLS\]|✿|<function=|DSML|"
                       r"<\|assistant\|>|\"name\"|tool_call\(|<\|tool_call|<arg_key>|<arg_value>|minimax|<invoke|"
                       r"<parameter|<seed:|<\|channel\||<\|message\||<\|start\||to=functions|<\|python_start\||"
                       r"get_weather\(")
THOUGHT = ("The user wants two lookups. Writing <tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"tz\": \"UTC\"}}"
           "\n</tool_call> here is only a thought.")


class FamilyScript(NamedTuple):
    model_type: str
    parser: str
    reasoning: bool
    eos: str
    text: str
    content: str


def j(x) -> str:
    return json.dumps(x, ensure_ascii=False)


def hermes_calls() -> str:
    return "\n".join(f'<tool_call>\n{{"name": "{n}", "arguments": {j(a)}}}\n</tool_call>' for n, a in CALLS)


def deepseek_v3_calls() -> str:
    return DS_B + "".join(f"{DS_CB}function{DS_S}{n}\n```json\n{j(a)}\n```{DS_CE}" for n, a in CALLS) + DS_E


def _xml(v) -> str:
    return v if isinstance(v, str) else j(v)


def _params(open_k, close_k, a) -> str:
    return "".join(f"{open_k.format(k=k)}{_xml(v)}{close_k}" for k, v in a.items())


def _harmony() -> str:
    return (f"<|channel|>analysis<|message|>{THOUGHT}<|end|><|start|>assistant<|channel|>commentary<|message|>"
            f"{CONTENT}<|end|>" + "".join(f"<|start|>assistant<|channel|>commentary to=functions.{n} <|constrain|>json"
                                        f"<|message|>{j(a)}<|call|>" for n, a in CALLS))


def _py(a) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in a.items())


def check_clean(text) -> None:
    """No end-of-turn token reached the client."""
    for eot in END_OF_TURN:
        assert eot not in (text or ""), f"end-of-turn token {eot!r} reached the client: {text!r}"


F = FamilyScript
FAMILIES: dict[str, FamilyScript] = {
    "qwen2_5": F("qwen2", "qwen2_5", False, EOS_QWEN, CONTENT + "\n" + hermes_calls(), CONTENT),
    "qwen3": F("qwen3", "qwen3", True, EOS_QWEN, f"<think>\n{THOUGHT}\n</think>\n\n{CONTENT}\n" + hermes_calls(),
               CONTENT),
    "hermes": F("qwen2", "hermes", False, EOS_QWEN, CONTENT + "\n" + hermes_calls(), CONTENT),
    "llama3_python_tag": F("llama", "llama3", False, EOS_LLAMA,
                           "<|python_tag|>" + "; ".join(f'{{"name": "{n}", "parameters": {j(a)}}}' for n, a in CALLS),
                           ""),
    "llama3_json": F("llama", "llama3", False, EOS_LLAMA,
                     "; ".join(f'{{"name": "{n}", "parameters": {j(a)}}}' for n, a in CALLS), ""),
    "mistral": F("mistral", "mistral", False, EOS_MISTRAL,
                 CONTENT + "[TOOL_CALLS] [" + ", ".join(f'{{"name": "{n}", "arguments": {j(a)}}}' for n, a in CALLS)
                 + "]", CONTENT),
    "deepseek_v3": F("deepseek_v3", "deepseek_v3", False, EOS_DS, CONTENT + deepseek_v3_calls(), CONTENT),
    "deepseek_v31": F("deepseek_v3", "deepseek_v31", False, EOS_DS,
                      CONTENT + DS_B + "".join(f"{DS_CB}{n}{DS_S}{j(a)}{DS_CE}" for n, a in CALLS) + DS_E, CONTENT),
    "deepseek_v32": F("deepseek_v32", "deepseek_v32", False, EOS_DS,
                      CONTENT + "\n\n<｜DSML｜function_calls>\n" + "".join(
                          f'<｜DSML｜invoke name="{n}">\n' + "".join(
                              f'<｜DSML｜parameter name="{k}" string="{"true" if isinstance(v, str) else "false"}">'
                              f'{_xml(v)}</｜DSML｜parameter>\n' for k, v in a.items()) + "</｜DSML｜invoke>\n"
                          for n, a in CALLS) + "</｜DSML｜function_calls>", CONTENT),
    "glm4": F("glm4", "glm4", False, EOS_GLM,
              CONTENT + "<|assistant|>" + "<|assistant|>".join(f"{n}\n{j(a)}" for n, a in CALLS), CONTENT),
    "chatglm3": F("chatglm", "chatglm3", False, EOS_GLM,
                  CONTENT + "<|assistant|>" + "<|assistant|>".join(
                      f"{n}\n```python\ntool_call({_py(a)})\n```"
                      for n, a in CALLS), CONTENT),
    "qwen1_5_or_2": F("qwen2", "qwen1_5_or_2", False, EOS_QWEN,
                      CONTENT + "\n" + "".join(f"✿FUNCTION✿: {n}\n✿ARGS✿: {j(a)}\n" for n, a in CALLS), CONTENT),
    "qwen3_coder": F("qwen3_moe", "qwen3_coder", False, EOS_QWEN,
                     CONTENT + "\n" + "\n".join(
                         f"<tool_call>\n<function={n}>\n" + "".join(f"<parameter={k}>\n{v}\n</parameter>\n"
                                                                    for k, v in a.items()) + "</function>\n</tool_call>"
                         for n, a in CALLS), CONTENT),
    # the 2025-2026 families: each with reasoning where the model reasons, calls in parallel
    "kimi_k2": F("kimi_k2", "kimi_k2", True, EOS_QWEN,
                 f"<think>{THOUGHT}</think>{CONTENT}<|tool_calls_section_begin|>" + "".join(
                     f"<|tool_call_begin|>functions.{n}:{i}<|tool_call_argument_begin|>{j(a)}<|tool_call_end|>"
                     for i, (n, a) in enumerate(CALLS)) + "<|tool_calls_section_end|>", CONTENT),
    "glm45": F("glm4_moe", "glm45", True, EOS_GLM,
               f"<think>{THOUGHT}</think>\n{CONTENT}\n" + "\n".join(
                   f"<tool_call>{n}\n" + _params("<arg_key>{k}</arg_key>\n<arg_value>", "</arg_value>\n", a)
                   + "</tool_call>" for n, a in CALLS), CONTENT),
    "glm47": F("glm4_moe", "glm47", False, "<|user|>",
               CONTENT + "".join(f"<tool_call>{n}" + _params("<arg_key>{k}</arg_key><arg_value>", "</arg_value>", a)
                                 + "</tool_call>" for n, a in CALLS), CONTENT),
    "minimax_m2": F("minimax_m2", "minimax_m2", True, "[e~[",
                    f"<think>{THOUGHT}</think>\n\n{CONTENT}\n<minimax:tool_call>\n" + "".join(
                        f'<invoke name="{n}">\n' + _params('<parameter name="{k}">', "</parameter>\n", a)
                        + "</invoke>\n" for n, a in CALLS) + "</minimax:tool_call>", CONTENT),
    "gpt_oss": F("gpt_oss", "gpt_oss", True, "<|return|>", _harmony(), CONTENT),
    "seed_oss": F("seed_oss", "seed_oss", True, "<seed:eos>",
                  f"<seed:think>{THOUGHT}</seed:think>{CONTENT}\n" + "\n".join(
                      f"<seed:tool_call>\n<function={n}>\n" + _params("<parameter={k}>", "</parameter>\n", a)
                      + "</function>\n</seed:tool_call>" for n, a in CALLS), CONTENT),
    "pythonic": F("llama", "pythonic", False, EOS_LLAMA,
                  CONTENT + " [" + ", ".join(f"{n}({_py(a)})" for n, a in CALLS) + "]", CONTENT),
    "llama4_pythonic": F("llama4", "llama4_pythonic", False, "<|eot|>",
                         CONTENT + "<|python_start|>[" + ", ".join(f"{n}({_py(a)})" for n, a in CALLS)
                         + "]<|python_end|>", CONTENT),
}
