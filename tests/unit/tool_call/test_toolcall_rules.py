"""Spec §6 rules one by one, lenient recovery, the registry and the resolver, purity."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from mindie_like.tool_call import ToolsCallProcessorManager, resolve_tool_call_processor
from mindie_like.tool_call.families import DS_CALL_BEGIN, DS_CALLS_BEGIN, DS_SEP
from tc_helpers import ALL_FAMILIES, NEW_FAMILIES, assemble, calls_of, check_split_invariance, proc, run_stream

REPO = Path(__file__).resolve().parents[3]
WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                                             "parameters": {"type": "object", "properties": {
                                                 "city": {"type": "string"}, "days": {"type": "integer"}}}}}]
TC = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


# ---------------------------------------------------------------- content
def test_content_is_text_outside_calls_trimmed():
    text = "Before.\n" + TC + "\nBetween.\n" + TC + "\nAfter.  \n"
    res = proc("qwen2_5").decode(text, WEATHER)
    assert len(res["tool_calls"]) == 2
    assert res["content"] == "Before.\n\nBetween.\n\nAfter."
    check_split_invariance(proc("qwen2_5"), text, WEATHER, n=50)


def test_leading_whitespace_rule():
    """Trailing whitespace is always trimmed when a call parsed. Leading whitespace is trimmed when a call comes
    before the first non-blank content; when content comes first it was already streamed, so to keep
    stream == non-stream for every split it stays (documented in docs/function_calling.md)."""
    p = proc("qwen2_5")
    assert p.decode("\n " + TC + "\n After", WEATHER)["content"] == "After"
    assert p.decode("\n Before " + TC, WEATHER)["content"] == "\n Before"
    check_split_invariance(p, "\n Before " + TC, WEATHER, n=50)


def test_content_empty_string_when_only_calls():
    res = proc("qwen3").decode("\n" + TC + "\n", WEATHER)
    assert res["content"] == "" and len(res["tool_calls"]) == 1


def test_no_call_parses_whole_text_unchanged():
    for text in ["  plain answer\n\n", "<tool_call>\n{not json}\n</tool_call>\n tail ", "[TOOL_CALLS] nope"]:
        for fam in ("qwen2_5", "mistral", "llama3"):
            assert proc(fam).decode(text, WEATHER) == {"content": text, "tool_calls": []}


def test_malformed_call_dropped_and_logged_with_request_id(caplog):
    text = '<tool_call>{"name": "get_weather", "arguments": {oops}}</tool_call>' + TC
    with caplog.at_level(logging.WARNING, logger="mindie_like.tool_call"):
        res = proc("qwen2_5").decode(text, WEATHER, request_id="req-42")
    assert calls_of(res) == [("get_weather", '{"city": "Paris"}')]
    assert res["content"] == ""
    assert any("req-42" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


# ---------------------------------------------------------------- arguments
def test_arguments_unicode_never_escaped():
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "\\u676d\\u5dde \\ud83d\\ude00"}}</tool_call>'
    res = proc("qwen3").decode(text)
    assert res["tool_calls"][0]["function"]["arguments"] == '{"city": "杭州 😀"}'
    check_split_invariance(proc("qwen3"), text, n=100)


def test_arguments_given_as_json_string_not_double_encoded():
    text = '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}</tool_call>'
    res = proc("qwen2_5").decode(text)
    assert res["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'
    check_split_invariance(proc("qwen2_5"), text, n=100)


@pytest.mark.parametrize("args", ['', ', "arguments": null', ', "arguments": ""'])
def test_missing_or_null_arguments_become_empty_object(args):
    text = '<tool_call>{"name": "get_time"' + args + '}</tool_call>'
    res = proc("qwen2_5").decode(text)
    assert calls_of(res) == [("get_time", "{}")]


@pytest.mark.parametrize("raw, sent", [('"tomorrow"', '"tomorrow"'), ('"[1, 2]"', '"[1, 2]"'),
                                       ('" 42 "', '" 42 "'), ('"say \\"hi\\"\\n"', '"say \\"hi\\"\\n"')])
def test_string_arguments_not_holding_an_object_are_sent_as_a_json_string(raw, sent):
    """OpenAI's `arguments` must be JSON: a string that is not an object is sent as json.dumps(string)."""
    text = '<tool_call>{"name": "get_time", "arguments": ' + raw + '}</tool_call>'
    res = proc("qwen2_5").decode(text)
    assert calls_of(res) == [("get_time", sent)]
    assert json.loads(res["tool_calls"][0]["function"]["arguments"]) == json.loads(raw)
    assert res["content"] == ""
    check_split_invariance(proc("qwen2_5"), text, n=100)


def test_string_arguments_that_look_like_an_object_but_are_not_one_are_not_a_call():
    text = '<tool_call>{"name": "get_time", "arguments": "{tomorrow"}</tool_call>'
    assert proc("qwen2_5").decode(text)["tool_calls"] == []


def test_arguments_canonical_form():
    text = '<tool_call>{"name":"f","arguments":{ "a" :1.50,"b":[ 1e2 , -0 ],"c":"x\\/y\\t"}}</tool_call>'
    args = proc("qwen2_5").decode(text)["tool_calls"][0]["function"]["arguments"]
    assert args == json.dumps(json.loads('{"a":1.50,"b":[1e2,-0],"c":"x\\/y\\t"}'), ensure_ascii=False)


def test_arguments_array_is_not_a_call():
    assert proc("qwen2_5").decode('<tool_call>{"name": "f", "arguments": [1]}</tool_call>')["tool_calls"] == []


# ---------------------------------------------------------------- end markers / cut-offs
def test_missing_end_marker_with_complete_json_is_a_call():
    for fam, text in [("qwen2_5", '<tool_call>{"name": "f", "arguments": {"a": 1}}'),
                      ("deepseek_v3", f'{DS_CALLS_BEGIN}{DS_CALL_BEGIN}function{DS_SEP}f\n```json\n{{"a": 1}}'),
                      ("deepseek_v31", f'{DS_CALLS_BEGIN}{DS_CALL_BEGIN}f{DS_SEP}{{"a": 1}}'),
                      ("qwen3_coder", '<tool_call>\n<function=f>\n</function>')]:
        assert [n for n, _ in calls_of(proc(fam).decode(text))] == ["f"], fam


def test_cut_off_call_keeps_text_as_content_even_after_a_call():
    text = TC + '<tool_call>{"name": "get_weather", "arguments": {"ci'
    res = proc("qwen2_5").decode(text, WEATHER)
    assert len(res["tool_calls"]) == 1
    assert res["content"] == '<tool_call>{"name": "get_weather", "arguments": {"ci'


def test_stream_sends_partial_call_on_cut_off():
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Par'
    s, deltas = run_stream(proc("qwen2_5"), [text], WEATHER)
    _, streamed = assemble(deltas)
    assert streamed == [("get_weather", '{"city": "Par')]
    assert s.tool_calls == [] and s.content == text  # what the non-streaming answer says


# ---------------------------------------------------------------- marker-less formats
def test_markerless_formats_need_declared_names_and_arguments():
    llama = proc("llama3")
    assert llama.decode('{"name": "rm_rf", "parameters": {}}', WEATHER)["tool_calls"] == []
    assert llama.decode('{"name": "get_weather"}', WEATHER)["tool_calls"] == []
    assert len(llama.decode('{"name": "get_weather", "parameters": {}}', WEATHER)["tool_calls"]) == 1
    glm = proc("glm4")
    assert glm.decode('rm_rf\n{"path": "/"}', WEATHER)["tool_calls"] == []
    assert glm.decode('Answer\n{"a": 1}', WEATHER)["content"] == 'Answer\n{"a": 1}'
    assert len(glm.decode('get_weather\n{"city": "x"}', WEATHER)["tool_calls"]) == 1


def test_ordinary_json_in_prose_is_content_for_llama():
    text = 'The config is {"name": "Bob", "age": 3} and {"x": [1, 2]}.'
    assert proc("llama3").decode(text, WEATHER) == {"content": text, "tool_calls": []}
    assert proc("llama3").decode(text) == {"content": text, "tool_calls": []}


def test_chatglm3_plain_answer_with_empty_metadata_line():
    text = "\nThe answer is 42."
    assert proc("chatglm3").decode(text) == {"content": text, "tool_calls": []}


# ---------------------------------------------------------------- streaming hold-back
def test_partial_marker_held_until_decided():
    p = proc("qwen2_5")
    s = p.new_stream(WEATHER)
    assert s.feed("Hello <tool_") == [{"content": "Hello"}]
    assert s.feed("x> world") == [{"content": " <tool_x> world"}]
    s = p.new_stream(WEATHER)
    s.feed("Hi <tool_")
    out = s.feed('call>{"name": "get_weather", "arguments": {"city": "P')
    assert out[0]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert out[1] == {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "P'}}]}


def test_name_emitted_once_whole_and_arguments_stream():
    s = proc("qwen3").new_stream()
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}</tool_call>'
    deltas = []
    for ch in text:
        deltas += s.feed(ch)
    heads = [d for d in deltas if "tool_calls" in d and "id" in d["tool_calls"][0]]
    assert len(heads) == 1 and heads[0]["tool_calls"][0]["function"]["name"] == "get_weather"
    frags = [d["tool_calls"][0]["function"]["arguments"] for d in deltas if d not in heads]
    assert len(frags) > 10 and "".join(frags) == '{"city": "Paris", "days": 3}'


def test_arguments_before_name_are_buffered_until_the_name():
    text = '[TOOL_CALLS] [{"arguments": {"city": "Paris"}, "name": "get_weather"}]'
    s, deltas = run_stream(proc("mistral"), list(text))
    assert assemble(deltas)[1] == [("get_weather", '{"city": "Paris"}')]


def test_ids():
    for fam, n in (("mistral", 9), ("qwen2_5", 13)):
        text = '[TOOL_CALLS]f{"a": 1}' if fam == "mistral" else '<tool_call>{"name": "f", "arguments": {}}'
        ids = {proc(fam).decode(text)["tool_calls"][0]["id"] for _ in range(20)}
        assert len(ids) == 20
        for i in ids:
            assert len(i) == n and (i.isalnum() if n == 9 else i.startswith("call_") and i[5:].isalnum())


# ---------------------------------------------------------------- lenient recovery
FENCED = 'I will call the tool.\n```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```'
BARE = 'Calling: {"name": "get_weather", "parameters": {"city": "Paris"}}'


@pytest.mark.parametrize("family", [f for f in ALL_FAMILIES + NEW_FAMILIES
                                    if f not in ("passthrough", "chatglm2", "gpt_oss")])
def test_lenient_recovery_fenced_and_bare(family):
    p = proc(family)
    for text in (FENCED, BARE):
        res = p.decode(text, WEATHER)
        assert calls_of(res) == [("get_weather", '{"city": "Paris"}')], (family, text)
        check_split_invariance(p, text, WEATHER, n=30)
        # off: by config, without tools (tool_choice none / no tools), or for an undeclared name
        assert p.decode(text, WEATHER, lenient=False)["tool_calls"] == [] or family == "llama3"
        assert p.decode(text, None)["tool_calls"] == [] or family == "llama3"
        other = [{"type": "function", "function": {"name": "other_tool", "parameters": {}}}]
        assert p.decode(text, other) == {"content": text, "tool_calls": []}


def test_lenient_releases_text_as_soon_as_it_cannot_be_a_call():
    s = proc("qwen2_5").new_stream(WEATHER)
    assert s.feed("a ```") == [{"content": "a"}]
    assert s.feed("py") == [{"content": " ```py"}]
    s = proc("qwen2_5").new_stream(WEATHER)
    assert s.feed('x {"name": "get_w') == [{"content": "x"}]
    assert s.feed("o") == [{"content": ' {"name": "get_wo'}]
    s = proc("qwen2_5").new_stream(WEATHER)
    assert s.feed('x {"city": 1}') == [{"content": 'x {"city": 1}'}]


def test_json_object_in_prose_is_released_as_it_is_written():
    # its first key is not "name": no call's start, sent at once (not held until the key's colon)
    s = proc("qwen2_5").new_stream(WEATHER)
    assert s.feed('Use {"ci') == [{"content": 'Use {"ci'}]
    assert s.feed('ty": "Paris"} ok') == [{"content": 'ty": "Paris"} ok'}]
    s = proc("qwen2_5").new_stream(WEATHER)
    assert s.feed('Use {"na') == [{"content": "Use"}]     # may still become {"name": ...
    assert s.feed("x") == [{"content": ' {"nax'}]
    # a brace in prose whose "key" holds a call: the call is found, the text before it released
    text = 'Odd {"a {"name": "get_weather", "arguments": {"city": "P"}} end'
    res = check_split_invariance(proc("qwen2_5"), text, WEATHER, n=60)
    assert calls_of(res) == [("get_weather", '{"city": "P"}')] and res["content"] == 'Odd {"a  end'
    s = proc("qwen2_5").new_stream(WEATHER)
    assert s.feed('Odd {"a {"na') == [{"content": 'Odd {"a'}]


def test_qwen25_coder_style_answer():
    text = ('```json\n{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Beijing",\n    "days": 3\n  }\n}\n'
            '```')
    res = proc("qwen2_5").decode(text, WEATHER)
    assert calls_of(res) == [("get_weather", '{"city": "Beijing", "days": 3}')] and res["content"] == ""


# ---------------------------------------------------------------- typed XML parameters
def test_qwen3_coder_values_typed_by_schema():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "s": {"type": "string"}, "i": {"type": "integer"}, "x": {"type": "number"}, "b": {"type": "boolean"},
        "o": {"type": "object"}, "a": {"type": "array"}, "n": {"type": ["integer", "null"]}}}}}]
    text = ("<tool_call>\n<function=f>\n<parameter=s>\n007\n</parameter>\n<parameter=i>\n42\n</parameter>\n"
            "<parameter=x>\n2.5\n</parameter>\n<parameter=b>\nTrue\n</parameter>\n<parameter=o>\n{\"k\": [1]}\n"
            "</parameter>\n<parameter=a>\n['p', 'q']\n</parameter>\n<parameter=n>\nnull\n</parameter>\n"
            "<parameter=u>\nfree text\n</parameter>\n</function>\n</tool_call>")
    args = json.loads(proc("qwen3_coder").decode(text, tools)["tool_calls"][0]["function"]["arguments"])
    assert args == {"s": "007", "i": 42, "x": 2.5, "b": True, "o": {"k": [1]}, "a": ["p", "q"], "n": None,
                    "u": "free text"}
    check_split_invariance(proc("qwen3_coder"), text, tools, n=100)


def test_qwen3_coder_multiline_string_value_streams():
    text = "<tool_call>\n<function=write>\n<parameter=body>\nline1\n\nline2 <b>\n</parameter>\n</function>\n</tool_call>"
    res = check_split_invariance(proc("qwen3_coder"), text, n=100)
    assert json.loads(res["tool_calls"][0]["function"]["arguments"]) == {"body": "line1\n\nline2 <b>"}


# ---------------------------------------------------------------- registry, resolver, purity
SPEC_ALIASES = {
    "chatglm2": ["chatglm2_6b", "chatglm_v2_6b", "chatglm_v2", "chatglm2"],
    "chatglm3": ["chatglm3_6b", "chatglm_v3_6b", "chatglm_v3", "chatglm3"],
    "glm4": ["chatglm4_9b", "chatglm_v4_9b", "glm_4", "glm_4_9b", "glm4"],
    "deepseek_v3": ["deepseek_v2", "deepseek_v3", "deepseekv2", "deepseekv3"],
    "deepseek_v31": ["deepseek_v31", "deepseekv31"],
    "llama3": ["llama", "llama3", "llama3_1"],
    "qwen1_5_or_2": ["qwen1_5", "qwen_1_5", "qwen2", "qwen_2", "qwen1_5_or_2", "qwen_1_5_or_2"],
    "qwen2_5": ["qwen2_5", "qwen_2_5", "qwen25"],
    "qwen3": ["qwen3", "qwen3_moe", "hermes"],
    "mistral": ["mistral"], "qwen3_coder": ["qwen3_coder"], "deepseek_v32": ["deepseek_v32"],
    "passthrough": ["passthrough"],
}


def test_registry_aliases():
    for family, names in SPEC_ALIASES.items():
        for name in names:
            p = ToolsCallProcessorManager.get_tool_call_processor(name)(tokenizer=None)
            assert p.family == family
            assert p.special_markers == proc(family).special_markers       # an alias is the same format
    assert ToolsCallProcessorManager.get_tool_call_processor("qwen2_5").__name__ == "ToolsCallProcessorQwen2_5"
    with pytest.raises(KeyError):
        ToolsCallProcessorManager.get_tool_call_processor("nope")
    assert "[TOOL_CALLS]" in proc("mistral").special_markers
    assert "<｜tool▁calls▁begin｜>" in proc("deepseek_v3").special_markers
    assert {"<tool_call>", "</tool_call>"} <= proc("qwen3").special_markers
    assert "<|python_tag|>" in proc("llama3").special_markers
    assert "<|assistant|>" in proc("chatglm3").special_markers


@pytest.mark.parametrize("model_type,cfg,tpl,family", [
    ("qwen3", None, None, "qwen3"), ("qwen3_moe", None, None, "qwen3"),
    ("qwen3_moe", None, "...<function=x>...<parameter=y>...", "qwen3_coder"),
    ("qwen2", None, "{% if tools %}<tool_call>{% endif %}", "qwen2_5"),
    ("qwen2", None, "{{ messages }}", "qwen1_5_or_2"),
    ("qwen2", {"model_type": "qwen2"}, None, "qwen2_5"),
    ("qwen2", {"hidden_size": 4096, "intermediate_size": 11008}, None, "qwen1_5_or_2"),   # Qwen1.5-7B
    ("qwen2", {"hidden_size": 3584, "intermediate_size": 18944}, None, "qwen2_5"),        # Qwen2(.5)-7B
    ("llama", None, None, "llama3"), ("mistral", None, None, "mistral"),
    ("chatglm", {"padded_vocab_size": 65024}, None, "chatglm3"),
    ("chatglm", {"padded_vocab_size": 151552}, None, "glm4"),
    ("chatglm", {"_name_or_path": "THUDM/chatglm2-6b"}, None, "chatglm2"),
    ("glm4", None, None, "glm4"),
    ("deepseek_v2", None, None, "deepseek_v3"), ("deepseek_v3", None, None, "deepseek_v3"),
    ("deepseekv3", None, None, "deepseek_v3"),
    ("gemma3", None, None, "passthrough"), (None, None, None, "passthrough"),
])
def test_resolver_defaults(model_type, cfg, tpl, family):
    assert resolve_tool_call_processor(None, model_type=model_type, hf_config=cfg, chat_template=tpl).family == family


def test_deepseek_default_follows_the_chat_template():
    """V3 / R1 templates fence the arguments in ```json; V3.1's write them right after the separator."""
    from tests.support.tiny_models import REPO
    v3 = (REPO / "templates" / "tool_chat_template_deepseekv3.jinja").read_text()
    v31 = (REPO / "templates" / "tool_chat_template_deepseekv31.jinja").read_text()
    for mt in ("deepseek_v3", "deepseek_v2"):
        assert resolve_tool_call_processor(None, model_type=mt, chat_template=v3).family == "deepseek_v3"
        assert resolve_tool_call_processor(None, model_type=mt, chat_template=v31).family == "deepseek_v31"
        assert resolve_tool_call_processor(None, model_type=mt, chat_template="{{ messages }}").family == "deepseek_v3"


@pytest.mark.parametrize("model_type,alias,fallback", [("glm4_moe", "glm45", "glm4"),
                                                       ("kimi_k2", "kimi_k2", "deepseek_v3")])
def test_new_architectures_take_their_family_or_the_closest(model_type, alias, fallback, caplog):
    """glm4_moe (GLM-4.5 / 4.7) and kimi_k2 resolve to their own family where the registry has it, else to the
    nearest existing one with a log line saying so."""
    import logging
    with caplog.at_level(logging.INFO, logger="mindie_like.tool_call"):
        got = resolve_tool_call_processor(None, model_type=model_type).family
    if alias in ToolsCallProcessorManager.names():
        assert got == ToolsCallProcessorManager.get_tool_call_processor(alias).spec.family
    else:
        assert got == fallback
        assert any(alias in r.getMessage() and fallback in r.getMessage() for r in caplog.records)


def test_resolver_configured_name_wins_and_bad_names_warn(caplog):
    assert resolve_tool_call_processor("deepseek_v31", model_type="deepseek_v3").family == "deepseek_v31"
    assert resolve_tool_call_processor("deepseekv31", model_type="deepseek_v3").family == "deepseek_v31"
    for bad in ("", "bogus"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mindie_like.tool_call"):
            p = resolve_tool_call_processor(bad, model_type="qwen3")
        assert p.family == "qwen3"
        msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert msgs and "qwen2_5" in msgs[0] and "deepseek_v31" in msgs[0]


def test_never_raises_on_internal_error(monkeypatch):
    from mindie_like.tool_call import engine

    def boom(self, *a, **k):
        raise RuntimeError("bug")
    monkeypatch.setattr(engine.ToolCallStream, "_call_object", boom)
    p = proc("qwen2_5")
    assert p.decode(TC + " tail") == {"content": TC + " tail", "tool_calls": []}
    s = p.new_stream()
    out = s.feed("Hi <tool_call>{") + s.feed("more") + s.finish()
    assert "".join(d.get("content", "") for d in out) == "Hi <tool_call>{more"


def test_packages_import_no_torch_or_aiohttp():
    code = ("import sys; import mindie_like.tool_call, mindie_like.reasoning; "
            "bad = [m for m in ('torch', 'aiohttp', 'transformers', 'numpy') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------- linear time, checked without timing
@pytest.mark.parametrize("family", ["qwen2_5", "llama3", "mistral", "deepseek_v3", "qwen3_coder", "glm4"])
def test_stream_never_rescans_the_output(family, monkeypatch):
    """The undecided tail the scanner keeps between feeds stays bounded while a 64 KiB call streams in
    4-character deltas: every feed works on O(len(delta)) text, so the whole stream is linear."""
    from tc_helpers import tools_for
    from tests.support.tool_call_text import render
    value = ("x = {'a': [1, 2]}  # \"q\" 杭州 😀 \\n " * 2000)[:65536]
    calls = [("write_file", {"path": "a.py", "body": value, "n": 1})]
    text = render(family, calls)
    p = proc(family)
    s = p.new_stream(tools_for(calls))
    longest = 0
    for i in range(0, len(text), 4):
        s.feed(text[i:i + 4])
        longest = max(longest, len(s._src.buf))
    s.finish()
    assert longest <= 64, longest
    assert [c["function"]["name"] for c in s.tool_calls] == ["write_file"]
    assert json.loads(s.tool_calls[0]["function"]["arguments"])["body"] == value
