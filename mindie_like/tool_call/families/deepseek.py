"""DeepSeek: V3's `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\n{...}\n```
<｜tool▁call▁end｜>...`, V3.1's `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜>`, and V3.2's DSML
`<｜DSML｜function_calls><｜DSML｜invoke name="f"><｜DSML｜parameter name="k" string="true|false">v</｜DSML｜parameter>
</｜DSML｜invoke></｜DSML｜function_calls>`. The markers use full-width bars (U+FF5C) and U+2581 for spaces."""
from __future__ import annotations

from ..call_format import ARGS, M, NAME, OPT, PARAMS, S, CallFormat, ParamStyle
from ..family import Family
from ..primitives import DROP, PENDING, Fail, NAME_LIMIT, _Call
from ..xml_params import ParamSyntax, invoke_block, named_invoke

DS_CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
DS_CALLS_END = "<｜tool▁calls▁end｜>"
DS_CALL_BEGIN = "<｜tool▁call▁begin｜>"
DS_CALL_END = "<｜tool▁call▁end｜>"
DS_SEP = "<｜tool▁sep｜>"
DSML = "｜DSML｜"
DSML_CALLS_BEGIN = "<｜DSML｜function_calls>"
DSML_CALLS_END = "</｜DSML｜function_calls>"
DSML_INVOKE = "<｜DSML｜invoke"
DSML_INVOKE_END = "</｜DSML｜invoke>"
DSML_PARAM = "<｜DSML｜parameter"
DSML_PARAM_END = "</｜DSML｜parameter>"
DSML_PARAMS = ParamSyntax(open=DSML_PARAM, key_end=">", close=DSML_PARAM_END, end=DSML_INVOKE_END,
                          terms=(DSML_PARAM_END,), attrs=True, json_first=True)
_EOT = ("<｜end▁of▁sentence｜>",)
_DS_TYPES = ("deepseek_v2", "deepseek_v3", "deepseekv2", "deepseekv3")


def _v31_template(tpl: str) -> bool:
    """V3 / R1 templates write a call as `function<｜tool▁sep｜>NAME` then a ```json block; V3.1's writes
    `NAME<｜tool▁sep｜>ARGS` with no fence. Without a template: V3's format."""
    return DS_SEP in tpl and "```json" not in tpl


def ds_block(s, lit, v31: bool):
    src = s._src
    explicit = lit == DS_CALLS_BEGIN
    if explicit:
        src.pos += len(lit)
        s._cut(PENDING)
    while True:
        got = yield from s._ws_lit((DS_CALL_BEGIN, DS_CALLS_END))
        if got is None:
            if explicit:
                yield from s._ws()
                c = yield from s._peek()
                if c is not None:  # junk inside the block
                    yield from s._skip((DS_CALLS_END,), (DS_CALLS_BEGIN,))
                s._cut(PENDING)
            return
        if got == DS_CALLS_END:
            s._cut(PENDING)
            return
        call = _Call(accepted=True)
        try:
            if not v31:
                yield from s._until((DS_SEP,), 64)  # the call type, "function"
                name, _ = yield from s._until(("\n",), NAME_LIMIT)
            else:
                name, _ = yield from s._until((DS_SEP,), NAME_LIMIT)
            name = name.strip()
            if not name:
                raise Fail(src.pos)
            call.name = name
            yield from s._fence_open()
            yield from s._args_object(call)
            s._call_done(call)
        except Fail as f:
            yield from s._failed(call, f, ends=(DS_CALL_END,),
                                    starts=(DS_CALL_BEGIN, DS_CALLS_END, DS_CALLS_BEGIN))
            if f.eof:
                return
            continue
        yield from s._ws_lit(("```",))
        yield from s._ws_lit((DS_CALL_END,))
        s._cut(DROP)

def ds_v3(s, lit):
    return ds_block(s, lit, v31=False)

def ds_v31(s, lit):
    return ds_block(s, lit, v31=True)


def dsml(s, lit):
    """DeepSeek V3.2: <｜DSML｜function_calls><｜DSML｜invoke name="f"><｜DSML｜parameter name="k"
    string="true|false">v</｜DSML｜parameter></｜DSML｜invoke></｜DSML｜function_calls>"""
    yield from invoke_block(s, lit, invoke=DSML_INVOKE, end=DSML_CALLS_END, body=named_invoke(DSML_PARAMS),
                            ends=(DSML_INVOKE_END,), starts=(DSML_INVOKE, DSML_CALLS_END))


_DS_MARKERS = (DS_CALLS_END, DS_CALL_END, DS_SEP)
DEEPSEEK_V3 = Family(
    "deepseek_v3", "ToolsCallProcessorDeepseekv3", ("deepseek_v2", "deepseek_v3", "deepseekv2", "deepseekv3"),
    triggers=((DS_CALLS_BEGIN, ds_v3), (DS_CALL_BEGIN, ds_v3)), extra_markers=_DS_MARKERS, end_of_turn=_EOT,
    guided=CallFormat(prefix=(M(DS_CALLS_BEGIN),),
                      call=(M(DS_CALL_BEGIN), S("function"), M(DS_SEP), NAME, S("\n```json\n"), ARGS, S("\n```"),
                            M(DS_CALL_END)),
                      sep=(OPT(S("\n")),), suffix=(M(DS_CALLS_END),)),
    detect=lambda mt, cfg, tpl: mt in _DS_TYPES and not _v31_template(tpl))
DEEPSEEK_V31 = Family(
    "deepseek_v31", "ToolsCallProcessorDeepseekv31", ("deepseek_v31", "deepseekv31"),
    triggers=((DS_CALLS_BEGIN, ds_v31), (DS_CALL_BEGIN, ds_v31)), extra_markers=_DS_MARKERS, end_of_turn=_EOT,
    guided=CallFormat(prefix=(M(DS_CALLS_BEGIN),), call=(M(DS_CALL_BEGIN), NAME, M(DS_SEP), ARGS, M(DS_CALL_END)),
                      suffix=(M(DS_CALLS_END),)),
    detect=lambda mt, cfg, tpl: mt in _DS_TYPES and _v31_template(tpl))
DEEPSEEK_V32 = Family(
    "deepseek_v32", "ToolsCallProcessorDeepseekv32", ("deepseek_v32", "deepseekv32"),
    triggers=((DSML_CALLS_BEGIN, dsml),),
    extra_markers=(DSML_CALLS_END, DSML_INVOKE, DSML_INVOKE_END, DSML_PARAM, DSML_PARAM_END), end_of_turn=_EOT,
    guided=CallFormat(prefix=(M(DSML_CALLS_BEGIN), S("\n")),
                      call=(M(DSML_INVOKE), S(' name="'), NAME, S('">\n'), PARAMS, M(DSML_INVOKE_END)),
                      sep=(S("\n"),), suffix=(S("\n"), M(DSML_CALLS_END)),
                      params=ParamStyle(DSML_PARAM + ' name="{key}" string="{string}">', DSML_PARAM_END + "\n")),
    detect=lambda mt, cfg, tpl: mt in ("deepseek_v32", "deepseekv32"))
