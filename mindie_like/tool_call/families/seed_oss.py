"""Seed-OSS: `<seed:tool_call>\\n<function=NAME>\\n<parameter=K>V</parameter>\\n</function>\\n</seed:tool_call>`,
reasoning in `<seed:think>...</seed:think>` (with `<seed:cot_budget_reflect>` notes inside it, kept as reasoning
text). Calls written inside the reasoning are examples, not calls: the thinking block is skipped as text."""
from __future__ import annotations

from ..call_format import M, NAME, PARAMS, S, CallFormat, ParamStyle
from ..family import Family
from ..primitives import CONTENT
from ..xml_params import invoke_block
from .hermes import xml_function

BEGIN, END = "<seed:tool_call>", "</seed:tool_call>"
THINK, THINK_END = "<seed:think>", "</seed:think>"
BUDGET, BUDGET_END = "<seed:cot_budget_reflect>", "</seed:cot_budget_reflect>"


def seed_block(s, lit):
    yield from invoke_block(s, lit, invoke="<function=", end=END, body=xml_function, rewind=True,
                            ends=("</function>",), starts=("<function=", END, BEGIN))


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
