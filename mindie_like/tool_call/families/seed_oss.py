"""Seed-OSS: `<seed:tool_call>\\n<function=NAME>\\n<parameter=K>V</parameter>\\n</function>\\n</seed:tool_call>`,
reasoning in `<seed:think>...</seed:think>` (with `<seed:cot_budget_reflect>` notes inside it, kept as reasoning
text). Calls written inside the reasoning are examples, not calls: the thinking block is skipped as text."""
from __future__ import annotations

from ..call_format import M, NAME, PARAMS, S, CallFormat, ParamStyle
from ..family import Family
from ..primitives import CONTENT, DROP, PENDING, Fail, _Call
from .hermes import xml_function

BEGIN, END = "<seed:tool_call>", "</seed:tool_call>"
THINK, THINK_END = "<seed:think>", "</seed:think>"
BUDGET, BUDGET_END = "<seed:cot_budget_reflect>", "</seed:cot_budget_reflect>"


def seed_block(s, lit):
    src = s._src
    src.pos += len(lit)
    s._cut(PENDING)
    while True:
        got = yield from s._ws_lit(("<function=", END))
        if got is None:
            yield from s._ws()
            c = yield from s._peek()
            if c is not None:
                yield from s._skip((END,), (BEGIN,))
            s._cut(PENDING)
            return
        if got == END:
            s._cut(PENDING)
            return
        src.pos -= len(got)
        call = _Call(accepted=True)
        try:
            yield from xml_function(s, call)
            s._call_done(call)
        except Fail as f:
            yield from s._failed(call, f, ends=("</function>",), starts=("<function=", END, BEGIN))
            if f.eof:
                return
            continue
        s._cut(DROP)


def seed_think(s, lit):
    """Reasoning left in the text (no reasoning parser): plain text up to `</seed:think>`, never calls."""
    s._src.pos += len(lit)
    yield from s._skip((THINK_END,), ())
    s._cut(CONTENT)


SEED_OSS = Family(
    "seed_oss", "ToolsCallProcessorSeedOss", ("seed_oss", "seedoss", "seed-oss"),
    triggers=((BEGIN, seed_block), (THINK, seed_think)), extra_markers=(END, THINK_END, BUDGET, BUDGET_END),
    reasoning=(THINK, THINK_END), end_of_turn=("<seed:eos>",),
    guided=CallFormat(call=(M(BEGIN), S("\n<function="), NAME, S(">\n"), PARAMS, S("</function>\n"), M(END)),
                      sep=(S("\n"),), params=ParamStyle("<parameter={key}>", "</parameter>\n")),
    detect=lambda mt, cfg, tpl: mt == "seed_oss" or BEGIN in tpl, priority=10)
