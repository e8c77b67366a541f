"""Kimi K2: `<|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:IDX<|tool_call_argument_begin|>{json}
<|tool_call_end|>...<|tool_calls_section_end|>`. The call id is the one the model wrote (`functions.NAME:IDX`)."""
from __future__ import annotations

from ..call_format import ARGS, M, NAME, RX, S, CallFormat
from ..family import Family
from ..primitives import DROP, PENDING, Fail, NAME_LIMIT, _Call

SECTION_BEGIN = "<|tool_calls_section_begin|>"
SECTION_END = "<|tool_calls_section_end|>"
CALL_BEGIN = "<|tool_call_begin|>"
ARG_BEGIN = "<|tool_call_argument_begin|>"
CALL_END = "<|tool_call_end|>"


def kimi_section(s, lit):
    src = s._src
    explicit = lit == SECTION_BEGIN
    if explicit:
        src.pos += len(lit)
        s._cut(PENDING)
    while True:
        got = yield from s._ws_lit((CALL_BEGIN, SECTION_END))
        if got is None:
            if explicit:
                yield from s._ws()
                c = yield from s._peek()
                if c is not None:  # junk inside the section
                    yield from s._skip((SECTION_END,), (SECTION_BEGIN,))
                s._cut(PENDING)
            return
        if got == SECTION_END:
            s._cut(PENDING)
            return
        call = _Call(accepted=True)
        try:
            cid, _ = yield from s._until((ARG_BEGIN,), NAME_LIMIT + 32)
            cid = cid.strip()
            name = cid.split(":", 1)[0] if ":" in cid else cid
            if name.startswith("functions."):
                name = name[len("functions."):]
            if not name:
                raise Fail(src.pos)
            call.name = name
            call.id = cid
            yield from s._args_object(call)
            s._call_done(call)
        except Fail as f:
            yield from s._failed(call, f, ends=(CALL_END,), starts=(CALL_BEGIN, SECTION_END, SECTION_BEGIN))
            if f.eof:
                return
            continue
        yield from s._ws_lit((CALL_END,))
        s._cut(DROP)


KIMI_K2 = Family(
    "kimi_k2", "ToolsCallProcessorKimiK2", ("kimi_k2", "kimik2", "kimi_k2_thinking"),
    triggers=((SECTION_BEGIN, kimi_section), (CALL_BEGIN, kimi_section)),
    extra_markers=(SECTION_END, ARG_BEGIN, CALL_END), id_style="native", end_of_turn=("<|im_end|>",),
    guided=CallFormat(prefix=(M(SECTION_BEGIN),),
                      call=(M(CALL_BEGIN), S("functions."), NAME, S(":"), RX("[0-9]{1,3}"), M(ARG_BEGIN), ARGS, M(CALL_END)),
                      suffix=(M(SECTION_END),)),
    detect=lambda mt, cfg, tpl: mt in ("kimi_k2", "kimi_k25") or SECTION_BEGIN in tpl, priority=10)
