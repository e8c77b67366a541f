"""MiniMax-M2: `<minimax:tool_call><invoke name="f"><parameter name="k">v</parameter>...</invoke>...
</minimax:tool_call>`."""
from __future__ import annotations

from ..call_format import M, NAME, PARAMS, S, CallFormat, ParamStyle
from ..family import Family
from ..primitives import DROP, PENDING, Fail, _Call
from ..xml_params import _ATTR, ParamSyntax, xml_params

BEGIN, END = "<minimax:tool_call>", "</minimax:tool_call>"
MINIMAX_PARAMS = ParamSyntax(open="<parameter", key_end=">", close="</parameter>", end="</invoke>",
                             terms=("</parameter>",), attrs=True)


def minimax_block(s, lit):
    src = s._src
    src.pos += len(lit)
    s._cut(PENDING)
    while True:
        got = yield from s._ws_lit(("<invoke", END))
        if got is None:
            yield from s._ws()
            c = yield from s._peek()
            if c is not None:   # junk inside the block
                yield from s._skip((END,), (BEGIN,))
            s._cut(PENDING)
            return
        if got == END:
            s._cut(PENDING)
            return
        call = _Call(accepted=True)
        try:
            attrs, _ = yield from s._until((">",), 512)
            name = dict(_ATTR.findall(attrs)).get("name", "").strip()
            if not name:
                raise Fail(src.pos)
            call.name = name
            yield from xml_params(s, call, MINIMAX_PARAMS)
            s._call_done(call)
        except Fail as f:
            yield from s._failed(call, f, ends=("</invoke>",), starts=("<invoke", END))
            if f.eof:
                return
            continue
        s._cut(DROP)


MINIMAX_M2 = Family(
    "minimax_m2", "ToolsCallProcessorMinimaxM2", ("minimax_m2", "minimax-m2", "minimaxm2"),
    triggers=((BEGIN, minimax_block),), extra_markers=(END,), end_of_turn=("[e~[",),
    guided=CallFormat(prefix=(M(BEGIN), S("\n")), call=(S('<invoke name="'), NAME, S('">\n'), PARAMS, S("</invoke>\n")),
                      suffix=(M(END),), params=ParamStyle('<parameter name="{key}">', "</parameter>\n")),
    detect=lambda mt, cfg, tpl: mt == "minimax_m2" or BEGIN in tpl, priority=10)
