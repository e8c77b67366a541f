"""GLM-4.5 / 4.6 (`glm45`) and GLM-4.7 (`glm47`): `<tool_call>NAME` then `<arg_key>K</arg_key><arg_value>V
</arg_value>` pairs, `</tool_call>`. GLM-4.5 puts a newline after the name and between the tags; GLM-4.7 writes
them back to back. Both spellings parse with either alias; they differ in what the grammar writer enforces."""
from __future__ import annotations

from ..call_format import M, NAME, OPT, PARAMS, S, CallFormat, ParamStyle
from ..family import Family
from ..primitives import DROP, Fail, NAME_LIMIT, _Call
from ..xml_params import ParamSyntax, xml_params

GLM_PARAMS = ParamSyntax(open="<arg_key>", key_end="</arg_key>", value_open="<arg_value>", close="</arg_value>",
                         end="</tool_call>", terms=("</arg_value>",), untyped="literal")


def glm_call(s, lit):
    src = s._src
    src.pos += len(lit)
    call = _Call(accepted=True)
    try:
        yield from s._ws()
        name, _ = yield from s._upto(("\n", "<arg_key>", "</tool_call>"), NAME_LIMIT)
        name = name.strip()
        if not name or "<" in name or "{" in name:
            raise Fail(src.pos)
        call.name = name
        yield from xml_params(s, call, GLM_PARAMS)
        s._call_done(call)
    except Fail as f:
        yield from s._failed(call, f, ends=("</tool_call>",))
        return
    s._cut(DROP)


def _glm47_template(tpl: str) -> bool:
    return "<arg_key>" in tpl and "\n<arg_key>" not in tpl


_EOT = ("<|user|>", "<|observation|>", "<|endoftext|>")
_MARKERS = ("</tool_call>", "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>")

GLM45 = Family(
    "glm45", "ToolsCallProcessorGlm45", ("glm45", "glm46", "glm4_moe", "glm4.5", "glm4.6"),
    triggers=(("<tool_call>", glm_call),), extra_markers=_MARKERS, end_of_turn=_EOT,
    guided=CallFormat(call=(M("<tool_call>"), NAME, S("\n"), PARAMS, M("</tool_call>")), sep=(OPT(S("\n")),),
                      params=ParamStyle("<arg_key>{key}</arg_key>\n<arg_value>", "</arg_value>\n")),
    detect=lambda mt, cfg, tpl: mt == "glm4_moe" and not _glm47_template(tpl), priority=1)
GLM47 = Family(
    "glm47", "ToolsCallProcessorGlm47", ("glm47", "glm4.7"),
    triggers=(("<tool_call>", glm_call),), extra_markers=_MARKERS, end_of_turn=_EOT,
    guided=CallFormat(call=(M("<tool_call>"), NAME, PARAMS, M("</tool_call>")),
                      params=ParamStyle("<arg_key>{key}</arg_key><arg_value>", "</arg_value>")),
    detect=lambda mt, cfg, tpl: mt in ("glm4_moe", "glm4_moe_lite") and (mt == "glm4_moe_lite"
                                                                          or _glm47_template(tpl)), priority=1)
