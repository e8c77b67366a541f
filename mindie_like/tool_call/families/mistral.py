"""Mistral: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]` (older tokenizers, text before the array
tolerated), and v11+ `[TOOL_CALLS]name{json}` / `name[ARGS]{json}` / `name[CALL_ID]id[ARGS]{json}` per call."""
from __future__ import annotations

import re

from ..call_format import ARGS, IS, M, NAME, OPT, S, CallFormat, json_call
from ..family import Family
from ..primitives import DROP, PENDING, Fail, _Call

_ARRAY_START = re.compile(r"\[[ \t\r\n]*\{")
JUNK_LIMIT = 512   # text tolerated between [TOOL_CALLS] and its JSON array


def _array(s):
    """The cursor is on `[`: the JSON array of call objects."""
    src = s._src
    src.pos += 1
    first = True
    while True:
        yield from s._ws()
        c = yield from s._peek()
        if c == "]" and first:
            src.pos += 1
            s._cut(PENDING)
            return
        if not (yield from s._marked_call_object(c)):
            return
        s._cut(DROP)
        yield from s._ws()
        c = yield from s._peek()
        if c == ",":
            src.pos += 1
            first = False
            continue
        if c == "]":
            src.pos += 1
            s._cut(DROP)
        return


def mistral(s, lit):
    src = s._src
    src.pos += len(lit)
    s._cut(PENDING)
    yield from s._ws()
    c = yield from s._peek()
    if c == "[":
        yield from _array(s)
        return
    call = _Call(accepted=True)
    try:
        if c == "{":  # a single object without the list
            yield from s._call_object(call, bare=False)
        else:  # [TOOL_CALLS]name{json} (v11+), name[ARGS]{json}, name[CALL_ID]id[ARGS]{json}
            try:
                name = yield from s._bare_name(declared=False)
            except Fail as f:
                if f.eof:
                    raise
                name = None
            got = None
            if name is not None:
                yield from s._ws()
                c = yield from s._peek()
                if c == "[":
                    got = yield from s._lit(("[ARGS]", "[CALL_ID]"), required=False)
            if name is None or got is None and c != "{":
                # not a v11 call: text the model put before its JSON array
                yield from s._find(_ARRAY_START, JUNK_LIMIT)
                yield from _array(s)
                return
            call.name = name
            if got == "[CALL_ID]":
                yield from s._until(("[ARGS]",), 64)
            yield from s._args_object(call)
        s._call_done(call)
    except Fail as f:
        yield from s._failed(call, f)
        return
    s._cut(DROP)


def _detect(mt, cfg, tpl):
    return mt in ("mistral", "mixtral", "ministral", "mistral3") or (
        mt in ("llama", "llama3", "llama4") and "[TOOL_CALLS]" in tpl)


MISTRAL = Family("mistral", "ToolsCallProcessorMistral", ("mistral",),
                 triggers=(("[TOOL_CALLS]", mistral),), id_style="mistral", extra_markers=("[ARGS]", "[CALL_ID]"),
                 end_of_turn=("</s>",),
                 guided=CallFormat(prefix=(M("[TOOL_CALLS]"), OPT(S(" ")), S("[")), call=json_call("arguments"),
                                   sep=(IS,), suffix=(S("]"),)),
                 # v11+ tokenizers (Magistral, Devstral, Mistral Small 3.2) have [ARGS]: one [TOOL_CALLS] per call
                 guided_variants=(("[ARGS]", CallFormat(call=(M("[TOOL_CALLS]"), NAME, M("[ARGS]"), ARGS))),),
                 detect=_detect, priority=1)
