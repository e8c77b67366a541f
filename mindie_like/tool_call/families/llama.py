"""Llama 3.x: `<|python_tag|>{"name": ..., "parameters": {...}}` or the bare JSON object, calls separated by `;`."""
from __future__ import annotations

from ..call_format import M, OPT, S, CallFormat, json_call
from ..family import Family
from ..primitives import DROP, Fail, _Call


def python_tag(s, lit):
    src = s._src
    src.pos += len(lit)
    call = _Call(accepted=True)
    try:
        yield from s._ws()
        c = yield from s._peek()
        if c != "{":
            raise Fail(src.pos, eof=c is None)
        yield from s._call_object(call, bare=False)
        s._call_done(call)
    except Fail as f:
        yield from s._failed(call, f)
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
