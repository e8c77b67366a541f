"""Chat templates: shipped tool templates, the tokenizers' own, sandboxing, errors; the tokenizer wrapper."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mindie_like.chat import ChatTemplate, Tokenizer, messages_for_template, tools_for_template
from mindie_like.protocol import ValidationFailure, parse_chat_request

REPO = Path(__file__).resolve().parents[3]
TEMPLATES = REPO / "templates"
TOKENIZERS = REPO / "tests" / "data" / "tokenizers"

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}},
         {"type": "function", "function": {"name": "get_time", "description": "Local time",
                                           "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}}]
CONVERSATION = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Weather in 北京 and the time?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_aaaaaaaa", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}},
        {"id": "call_bbbbbbbb", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": "CST"}'}}]},
    {"role": "tool", "tool_call_id": "call_aaaaaaaa", "content": "sunny, 25C"},
    {"role": "tool", "tool_call_id": "call_bbbbbbbb", "content": "14:00"},
    {"role": "assistant", "content": "It is sunny and 14:00."},
    {"role": "user", "content": "Thanks!"},
]


def msgs(conv=CONVERSATION):
    return messages_for_template(parse_chat_request({"model": "m", "messages": conv}).messages)


def shipped(name, **kw):
    return ChatTemplate.from_file(TEMPLATES / name, **kw)


@pytest.fixture(scope="module")
def qwen():
    return Tokenizer.load(str(TOKENIZERS / "qwen2.5"))


# ------------------------------------------------------------------------------------ shipped templates

def test_deepseekv3_template_tools_and_multi_turn():
    t = shipped("tool_chat_template_deepseekv3.jinja", bos_token="<｜begin▁of▁sentence｜>")
    out = t.render(msgs(), tools=TOOLS)
    assert out.startswith("<｜begin▁of▁sentence｜>You are helpful.")
    assert '"name": "get_weather"' in out and '"name": "get_time"' in out  # tool signatures
    call1 = '<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city": "北京"}\n```<｜tool▁call▁end｜>'
    call2 = '<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{"tz": "CST"}\n```<｜tool▁call▁end｜>'
    assert ("<｜User｜>Weather in 北京 and the time?<｜Assistant｜><｜tool▁calls▁begin｜>" + call1 + "\n" + call2
            + "<｜tool▁calls▁end｜><｜end▁of▁sentence｜>") in out
    assert ("<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>sunny, 25C<｜tool▁output▁end｜>\n"
            "<｜tool▁output▁begin｜>14:00<｜tool▁output▁end｜><｜tool▁outputs▁end｜>"
            "It is sunny and 14:00.<｜end▁of▁sentence｜><｜User｜>Thanks!<｜Assistant｜>") in out
    assert out.endswith("<｜User｜>Thanks!<｜Assistant｜>")
    # generation prompt right after a tool result: the model continues after the outputs block
    out2 = t.render(msgs(CONVERSATION[:5]), tools=TOOLS)
    assert out2.endswith("<｜tool▁output▁end｜><｜tool▁outputs▁end｜>")
    assert t.render(msgs(CONVERSATION[:2]), tools=None).count("get_weather") == 0
    think = t.render(msgs(CONVERSATION[:2]), template_kwargs={"enable_thinking": True})
    assert think.endswith("<｜Assistant｜><think>\n")


def test_deepseekv31_template_tools_and_multi_turn():
    t = shipped("tool_chat_template_deepseekv31.jinja", bos_token="<｜begin▁of▁sentence｜>")
    out = t.render(msgs(), tools=TOOLS)
    assert "### get_weather" in out and "### get_time" in out
    assert ("<｜User｜>Weather in 北京 and the time?<｜Assistant｜></think><｜tool▁calls▁begin｜>"
            '<｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "北京"}<｜tool▁call▁end｜>'
            '<｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{"tz": "CST"}<｜tool▁call▁end｜>'
            "<｜tool▁calls▁end｜><｜end▁of▁sentence｜>") in out
    assert ("<｜tool▁output▁begin｜>sunny, 25C<｜tool▁output▁end｜><｜tool▁output▁begin｜>14:00<｜tool▁output▁end｜>"
            "It is sunny and 14:00.<｜end▁of▁sentence｜>") in out
    assert out.endswith("<｜User｜>Thanks!<｜Assistant｜></think>")
    assert t.render(msgs(CONVERSATION[:2]), template_kwargs={"thinking": True}).endswith("<｜Assistant｜><think>")


def test_llama31_json_template_tools_and_multi_turn():
    t = shipped("tool_chat_template_llama3.1_json.jinja", bos_token="<|begin_of_text|>")
    out = t.render(msgs(), tools=TOOLS, template_kwargs={"date_string": "26 Jul 2024"})
    assert out.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n")
    assert "Today Date: 26 Jul 2024" in out
    assert out.count('"name": "get_weather"') == 2  # the signature in the first user turn, and the call
    assert ('<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "get_weather", "parameters": {"city": "北京"}}; '
            '{"name": "get_time", "parameters": {"tz": "CST"}}<|eot_id|>') in out
    assert "<|start_header_id|>ipython<|end_header_id|>\n\nsunny, 25C<|eot_id|>" in out
    assert out.endswith("<|start_header_id|>user<|end_header_id|>\n\nThanks!<|eot_id|>"
                        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert "Today Date: " in t.render(msgs(CONVERSATION[:2]))  # strftime_now fills the date


@pytest.mark.parametrize("name", ["tool_chat_template_deepseekv3.jinja", "tool_chat_template_deepseekv31.jinja",
                                  "tool_chat_template_llama3.1_json.jinja"])
def test_shipped_templates_render_without_tools_and_with_list_content(name):
    t = shipped(name)
    out = t.render(msgs([{"role": "user", "content": [{"type": "text", "text": "hello"}]}]))
    assert "hello" in out and "get_weather" not in out


def test_deepseek_markers_are_single_special_tokens(qwen):
    hf = qwen.hf
    markers = ["<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>",
               "<｜tool▁sep｜>", "<｜end▁of▁sentence｜>"]
    hf.add_special_tokens({"additional_special_tokens": markers})
    tok = Tokenizer(hf)
    out = shipped("tool_chat_template_deepseekv31.jinja").render(msgs(), tools=TOOLS)
    ids = tok.encode_prompt(out)
    for m in markers:
        assert hf.convert_tokens_to_ids(m) in ids
    assert tok.decode(ids) == out


# ------------------------------------------------------------------------------------ tokenizer templates

def test_qwen_tokenizer_template_with_tool_conversation(qwen):
    t = ChatTemplate.from_tokenizer(qwen)
    out = t.render(msgs(), tools=TOOLS)
    assert "<tools>\n" + json.dumps(TOOLS[0], ensure_ascii=False) in out
    # arguments given as JSON strings reach the template as objects: rendered once, never double-encoded
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>' in out
    assert "<tool_response>\nsunny, 25C\n</tool_response>\n<tool_response>\n14:00\n</tool_response>" in out
    assert out.endswith("<|im_start|>assistant\n")
    ids = qwen.encode_prompt(out)
    # two <tool_call> in the instructions, two calls; each one token
    assert ids.count(qwen.hf.convert_tokens_to_ids("<tool_call>")) == out.count("<tool_call>") == 4
    assert ids[0] == qwen.hf.convert_tokens_to_ids("<|im_start|>")  # Qwen has no BOS: nothing added


def test_smollm_tokenizer_template():
    tok = Tokenizer.load(str(TOKENIZERS / "smollm2"))
    out = ChatTemplate.from_tokenizer(tok).render(msgs(CONVERSATION[1:2]))
    assert out.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    ids = tok.encode_prompt(out)
    assert ids.count(tok.bos_token_id) == out.count("<|im_start|>")  # its BOS is <|im_start|>; none added


def test_override_file_beats_tokenizer_template(qwen, tmp_path):
    p = tmp_path / "t.jinja"
    p.write_text("{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}")
    t = ChatTemplate.from_tokenizer(qwen, override=p)
    assert t.render(msgs(CONVERSATION[1:2])) == "[user]Weather in 北京 and the time?"
    with pytest.raises(ValueError, match="cannot read"):
        ChatTemplate.from_tokenizer(qwen, override=tmp_path / "missing.jinja")


def test_tool_choice_selects_rendered_tools():
    assert tools_for_template(TOOLS, "none") is None
    assert tools_for_template(TOOLS, "auto") == TOOLS
    assert tools_for_template(TOOLS, "required") == TOOLS
    named = tools_for_template(TOOLS, {"type": "function", "function": {"name": "get_time"}})
    assert [t["function"]["name"] for t in named] == ["get_time"]
    assert tools_for_template(None, "auto") is None


def test_messages_for_template_shapes():
    m = msgs()
    assert m[2]["content"] == "" and m[2]["tool_calls"][0]["function"]["arguments"] == {"city": "北京"}
    assert m[3]["tool_call_id"] == "call_aaaaaaaa"
    raw = messages_for_template([{"role": "assistant", "content": None,
                                  "tool_calls": [{"function": {"name": "f", "arguments": "not json"}}]}])
    assert raw[0]["tool_calls"][0]["function"]["arguments"] == "not json"
    assert raw[0]["tool_calls"][0]["type"] == "function"


# ------------------------------------------------------------------------------------ errors and sandbox

def test_raise_exception_is_422():
    t = ChatTemplate("{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with "
                     "a user message') }}{% endif %}ok")
    with pytest.raises(ValidationFailure) as e:
        t.render(msgs(CONVERSATION[:1]))
    assert e.value.status == 422
    assert e.value.message == ("messages: the chat template refused the conversation: Conversations must start "
                               "with a user message")
    assert t.render(msgs(CONVERSATION[1:2])) == "ok"


def test_runtime_template_errors_are_422_without_traceback():
    t = ChatTemplate("{{ messages[0].content + 5 }}")
    with pytest.raises(ValidationFailure) as e:
        t.render(msgs(CONVERSATION[1:2]))
    assert e.value.status == 422 and "Traceback" not in e.value.message
    assert e.value.message.startswith("messages: the chat template failed to render")


def test_syntax_error_at_load():
    with pytest.raises(ValueError, match="invalid Jinja"):
        ChatTemplate("{% for m in messages %}")
    with pytest.raises(ValueError, match="empty"):
        ChatTemplate("   ")


@pytest.mark.parametrize("evil", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.environ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ raise_exception.__globals__ }}",
    "{{ messages.append({'role': 'user'}) }}",
    "{% set x = messages[0].update({'content': 'pwned'}) %}",
    "{{ self.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
])
def test_sandbox_blocks_python_internals(evil):
    t = ChatTemplate(evil)
    try:
        out = t.render(msgs(CONVERSATION[1:2]))
    except ValidationFailure as e:
        assert e.status == 422
        return
    # when jinja resolves the attribute to Undefined the output is harmless and empty
    assert "environ" not in out and "uid=" not in out and "subclasses" not in out and out.strip() == ""


def test_no_file_access():
    t = ChatTemplate("{% include '/etc/passwd' %}")
    with pytest.raises(ValidationFailure) as e:
        t.render(msgs(CONVERSATION[1:2]))
    assert e.value.status == 422


def test_template_kwargs_reach_template_but_cannot_replace_messages():
    t = ChatTemplate("{{ greeting }}|{{ messages | length }}|{{ enable_thinking }}")
    out = t.render(msgs(CONVERSATION[1:2]), template_kwargs={"greeting": "hi", "messages": [], "enable_thinking": True})
    assert out == "hi|1|True"


def test_strftime_now_and_tojson_keep_unicode():
    t = ChatTemplate("{{ strftime_now('%Y') | length }} {{ {'a': '北京'} | tojson }}")
    assert t.render([]) == '4 {"a": "北京"}'


# ------------------------------------------------------------------------------------ tokenizer wrapper

class _BosTok:
    """A tokenizer that prepends BOS (id 1) like Llama's."""
    bos_token, eos_token, bos_token_id, eos_token_id = "<s>", "</s>", 1, 2
    all_special_tokens = ["<s>", "</s>"]

    def encode(self, text, add_special_tokens=True):
        ids = []
        rest = text
        while rest:
            if rest.startswith("<s>"):
                ids.append(1)
                rest = rest[3:]
            else:
                ids.append(100 + ord(rest[0]))
                rest = rest[1:]
        return ([1] if add_special_tokens else []) + ids

    def convert_tokens_to_ids(self, token):
        return {"<s>": 1, "</s>": 2}.get(token, 0)

    def __len__(self):
        return 1000


def test_encode_prompt_adds_exactly_one_bos():
    tok = Tokenizer(_BosTok())
    assert tok.encode_prompt("<s>hi") == [1, 100 + ord("h"), 100 + ord("i")]   # template wrote BOS: not doubled
    assert tok.encode_prompt("hi") == [1, 100 + ord("h"), 100 + ord("i")]      # template did not: one added
    assert tok.count_tokens("hi") == 3
    assert 2 in tok.end_of_turn_ids


def test_end_of_turn_ids(qwen):
    assert qwen.hf.convert_tokens_to_ids("<|im_end|>") in qwen.end_of_turn_ids
    assert qwen.hf.convert_tokens_to_ids("<tool_call>") not in qwen.end_of_turn_ids
    assert qwen.token_text(qwen.hf.convert_tokens_to_ids("<|im_end|>")) == "<|im_end|>"


def test_generation_block_is_rendered_as_its_body():
    t = ChatTemplate("{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}[{{ m.content }}]"
                     "{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}")
    assert t.render(msgs([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])) == "q[a]"


def test_named_tokenizer_templates_pick_tool_use():
    class Tok:
        bos_token, eos_token = "<s>", "</s>"
        chat_template = {"default": "plain:{{ messages[0].content }}",
                         "tool_use": "tools:{{ tools | length }}:{{ messages[0].content }}"}

    t = ChatTemplate.from_tokenizer(Tok())
    m = msgs(CONVERSATION[1:2])
    assert t.render(m).startswith("plain:") and t.render(m, tools=TOOLS).startswith("tools:2:")
