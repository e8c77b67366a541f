"""Llama 3.x: `<|python_tag|>{"name": ..., "parameters": {...}}` or the bare JSON object, calls separated by `;`."""
from __future__ import annotations

from ..call_format import M, OPT, S, CallFormat, json_call
from ..family import Family
from ..primitives import DROP


def python_tag(s, lit):
    src = s._src
    src.pos += len(lit)
    yield from s._ws()
    c = yield from s._peek()
    if not (yield from s._marked_call_object(c)):
        return
    if s.spec.call_separator:
        yield from s._ws_lit((s.spec.call_separator,))
    s._cut(DROP)


LLAMA3 = Family("llama3", "ToolsCallProcessorLlama", ("llama", "llama3", "llama3_1"),
                triggers=(("<|python_tag|>", python_tag),), bare_json=True, call_separator=";",
                end_of_turn=("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"),
                guided=CallFormat(prefix=(OPT(M("<|python_tag|>")),), call=json_call("parameters"), sep=(S("; "),),
                                  json_union_prefix=(M("<|python_tag|>"),), trigger="<|python_tag|>"),
                detect=lambda mt, cfg, tpl: mt in ("llama", "llama3", "llama4"))
