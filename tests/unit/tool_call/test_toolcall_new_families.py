"""What the 2025-2026 families add beyond the generic rules: XML arguments streamed argument by argument and typed
from the schema, harmony channels, native Kimi ids, pythonic candidates, default detection; and the three
outputs we used to miss (Mistral's text before its array, Qwen-Agent's one-line call)."""
from __future__ import annotations

import json

import pytest

from mindie_like.tool_call import resolve_tool_call_processor
from tc_helpers import assemble, calls_of, check_split_invariance, proc, run_stream

NOTE = {"type": "function", "function": {"name": "write_note", "parameters": {
    "type": "object", "properties": {"title": {"type": "string"}, "body": {"type": "string"},
                                     "pages": {"type": "integer"}, "tags": {"type": "array"},
                                     "draft": {"type": "boolean"}, "due": {"type": ["string", "null"]}}}}}
BODY = "line one <b>bold</b>\nline two & </p> more"
ARGS = {"title": "T", "body": BODY, "pages": 3, "tags": ["a", "b"], "draft": False, "due": None}
XML = {
    "glm45": "<tool_call>write_note\n" + "".join(
        f"<arg_key>{k}</arg_key>\n<arg_value>{v}</arg_value>\n"
        for k, v in [("title", "T"), ("body", BODY), ("pages", "3"), ("tags", '["a", "b"]'), ("draft", "false"),
                     ("due", "null")]) + "</tool_call>",
    "minimax_m2": '<minimax:tool_call>\n<invoke name="write_note">\n' + "".join(
        f'<parameter name="{k}">{v}</parameter>\n'
        for k, v in [("title", "T"), ("body", BODY), ("pages", "3"), ("tags", '["a", "b"]'), ("draft", "false"),
                     ("due", "null")]) + "</invoke>\n</minimax:tool_call>",
    "seed_oss": "<seed:tool_call>\n<function=write_note>\n" + "".join(
        f"<parameter={k}>{v}</parameter>\n"
        for k, v in [("title", "T"), ("body", BODY), ("pages", "3"), ("tags", '["a", "b"]'), ("draft", "false"),
                     ("due", "null")]) + "</function>\n</seed:tool_call>",
}


@pytest.mark.parametrize("family", sorted(XML))
def test_xml_parameters_typed_by_schema_and_markup_kept(family):
    res = check_split_invariance(proc(family), XML[family], [NOTE], n=100)
    assert [(n, json.loads(a)) for n, a in calls_of(res)] == [("write_note", ARGS)]
    assert res["content"] == ""


@pytest.mark.parametrize("family", sorted(XML))
def test_xml_arguments_stream_argument_by_argument(family):
    """Before the call closes, the finished parameters and the string value being written have streamed."""
    text = XML[family]
    cut = text.index("more") + 2   # inside the body's value, before its closing tag
    s = proc(family).new_stream([NOTE])
    deltas = []
    for ch in text[:cut]:
        deltas += s.feed(ch)
    _, calls = assemble(deltas)
    assert calls and calls[0][0] == "write_note"
    assert calls[0][1].startswith('{"title": "T", "body": "line one <b>bold</b>\\nline two & </p> mo')


def test_glm47_back_to_back_tags_and_glm45_alias_parse_both():
    tight = "<tool_call>f<arg_key>a</arg_key><arg_value>1</arg_value></tool_call>"
    loose = "<tool_call>f\n<arg_key>a</arg_key>\n<arg_value>1</arg_value>\n</tool_call>"
    for family in ("glm45", "glm47"):
        for text in (tight, loose):
            assert calls_of(proc(family).decode(text)) == [("f", '{"a": 1}')]


def test_kimi_ids_are_the_models_and_indexes_count_up():
    text = ("<|tool_calls_section_begin|><|tool_call_begin|>functions.a:0<|tool_call_argument_begin|>{}"
            "<|tool_call_end|><|tool_call_begin|>functions.b:1<|tool_call_argument_begin|>{\"x\": 1}"
            "<|tool_call_end|><|tool_calls_section_end|>")
    res = check_split_invariance(proc("kimi_k2"), text, n=50)
    assert [c["id"] for c in res["tool_calls"]] == ["functions.a:0", "functions.b:1"]
    _, deltas = run_stream(proc("kimi_k2"), [text])
    heads = [d["tool_calls"][0] for d in deltas if "tool_calls" in d and "id" in d["tool_calls"][0]]
    assert [(h["index"], h["id"]) for h in heads] == [(0, "functions.a:0"), (1, "functions.b:1")]


HARMONY = ("<|channel|>analysis<|message|>Need the weather.<|end|>"
           "<|start|>assistant<|channel|>commentary<|message|>Checking.<|end|>"
           "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
           '{"city": "Paris"}<|call|>')


def test_harmony_channels_sorted():
    res = proc("gpt_oss").decode(HARMONY)
    assert res["reasoning_content"] == "Need the weather."
    assert res["content"] == "Checking."
    assert calls_of(res) == [("get_weather", '{"city": "Paris"}')]
    final = "<|channel|>analysis<|message|>think<|end|><|start|>assistant<|channel|>final<|message|>Hello!"
    res = proc("gpt_oss").decode(final)
    assert (res["reasoning_content"], res["content"], res["tool_calls"]) == ("think", "Hello!", [])


def test_harmony_reasoning_streams_before_its_message_ends():
    s = proc("gpt_oss").new_stream(None)
    out = s.feed("<|channel|>analysis<|message|>step one, ")
    out += s.feed("step two")
    assert "".join(d.get("reasoning_content", "") for d in out) == "step one, step two"
    assert s.in_reasoning


def test_harmony_without_tools_drops_calls_and_builtins():
    s = proc("gpt_oss").new_stream(None, report_calls=False)
    deltas = s.feed(HARMONY) + s.finish()
    assert not any("tool_calls" in d for d in deltas)
    assert "".join(d.get("content", "") for d in deltas) == "Checking."
    builtin = "<|start|>assistant to=browser.search<|channel|>commentary<|message|>{\"q\": 1}<|call|>"
    assert proc("gpt_oss").decode(builtin) == {"content": "", "tool_calls": [], "reasoning_content": ""}


def test_pythonic_bracket_in_prose_stays_content():
    p = proc("pythonic")
    for text in ("See [1] and [the docs](http://x).", "a list [1, 2, 3] here", "[not a call]"):
        assert check_split_invariance(p, text, n=30) == {"content": text, "tool_calls": []}
    text = "Sure: [get_weather(city='SF', days=2), noop()]"
    assert calls_of(check_split_invariance(p, text, n=50)) == [("get_weather", '{"city": "SF", "days": 2}'),
                                                                ("noop", "{}")]


# ---------------------------------------------------------------- the three misses
@pytest.mark.parametrize("text", [
    '[TOOL_CALLS]Here you go: [{"name": "f", "arguments": {"a": 1}}]',
    '[TOOL_CALLS] ```json\n[{"name": "f", "arguments": {"a": 1}}]\n```',
    '[TOOL_CALLS]: [ {"name": "f", "arguments": {"a": 1}} ]',
])
def test_mistral_text_before_the_json_array(text):
    res = check_split_invariance(proc("mistral"), text, n=100)
    assert calls_of(res) == [("f", '{"a": 1}')]
    assert "[TOOL_CALLS]" not in res["content"] and "Here you go" not in res["content"]


def test_mistral_v11_name_still_wins_over_junk():
    assert calls_of(proc("mistral").decode('[TOOL_CALLS]add{"a": 1}')) == [("add", '{"a": 1}')]
    assert proc("mistral").decode("[TOOL_CALLS] not json at all")["tool_calls"] == []


@pytest.mark.parametrize("text", ['✿FUNCTION✿get_weather✿ARGS✿{"city": "Paris"}',
                                  '✿FUNCTION✿: get_weather✿ARGS✿: {"city": "Paris"}✿RESULT✿'])
def test_qwen_agent_one_line(text):
    res = check_split_invariance(proc("qwen1_5_or_2"), text, n=100)
    assert calls_of(res) == [("get_weather", '{"city": "Paris"}')] and res["content"] == ""


# ---------------------------------------------------------------- default detection
@pytest.mark.parametrize("model_type,cfg,tpl,family", [
    ("kimi_k2", None, None, "kimi_k2"),
    ("deepseek_v3", None, "{{'<|tool_calls_section_begin|>'}}", "kimi_k2"),
    ("glm4_moe", None, "<tool_call>{{ tc.name }}\n<arg_key>{{ k }}</arg_key>", "glm45"),
    ("glm4_moe", None, "<tool_call>{{ tc.name }}<arg_key>{{ k }}</arg_key>", "glm47"),
    ("glm4_moe_lite", None, None, "glm47"),
    ("minimax_m2", None, None, "minimax_m2"),
    ("gpt_oss", None, None, "gpt_oss"),
    ("seed_oss", None, None, "seed_oss"),
    ("llama4", None, "<|python_start|>[func_name1(params_name1=params_value1)]", "llama4_pythonic"),
    ("llama", None, "[func_name1(params_name1=params_value1, params_name2=params_value2...)]", "pythonic"),
    ("llama", None, None, "llama3"),
])
def test_default_family_detection(model_type, cfg, tpl, family):
    assert resolve_tool_call_processor(None, model_type=model_type, hf_config=cfg, chat_template=tpl).family == family


def test_harmony_recipient_at_the_very_start_after_whitespace():
    text = '   \n to=functions.f<|channel|>commentary<|message|>{"a": 1}'
    res = check_split_invariance(proc("gpt_oss"), text, n=50)
    assert calls_of(res) == [("f", '{"a": 1}')] and res["content"] == ""
