"""MiniMax-M2: `<minimax:tool_call><invoke name="f"><parameter name="k">v</parameter>...</invoke>...
</minimax:tool_call>`."""
from __future__ import annotations

from ..call_format import M, NAME, PARAMS, S, CallFormat, ParamStyle
from ..family import Family
from ..xml_params import ParamSyntax, invoke_block, named_invoke

BEGIN, END = "<minimax:tool_call>", "</minimax:tool_call>"
MINIMAX_PARAMS = ParamSyntax(open="<parameter", key_end=">", close="</parameter>", end="</invoke>",
                             terms=("</parameter>",), attrs=True)


def minimax_block(s, lit):
    yield from invoke_block(s, lit, invoke="<invoke", end=END, body=named_invoke(MINIMAX_PARAMS),
                            ends=("</invoke>",), starts=("<invoke", END))


MINIMAX_M2 = Family(
    "minimax_m2", "ToolsCallProcessorMinimaxM2", ("minimax_m2", "minimax-m2", "minimaxm2"),
    triggers=((BEGIN, minimax_block),), extra_markers=(END,), end_of_turn=("[e~[",),
    guided=CallFormat(prefix=(M(BEGIN), S("\n")), call=(S('<invoke name="'), NAME, S('">\n'), PARAMS, S("</invoke>\n")),
                      suffix=(M(END),), params=ParamStyle('<parameter name="{key}">', "</parameter>\n")),
    detect=lambda mt, cfg, tpl: mt == "minimax_m2" or BEGIN in tpl, priority=10)
