"""Hermes-style calls: `<tool_call>{"name": ..., "arguments": ...}</tool_call>` (Qwen2.5, Qwen3) and Qwen3-Coder's
`<tool_call><function=NAME><parameter=K>V</parameter></function></tool_call>`."""
from __future__ import annotations

from ..call_format import M, NAME, OPT, PARAMS, S, CallFormat, ParamStyle, json_call
from ..family import Family
from ..primitives import DROP, Fail, NAME_LIMIT, _Call
from ..xml_params import ParamSyntax, xml_params

CODER_PARAMS = ParamSyntax(open="<parameter=", key_end=">", close="</parameter>", end="</function>",
                           terms=("</parameter>", "<parameter=", "</function>"), strip_nl=True)


def xml_function(s, call: _Call, params: ParamSyntax = CODER_PARAMS):
    """`<function=NAME>` + parameters up to `</function>` (Qwen3-Coder, Seed-OSS)."""
    yield from s._lit(("<function=",))
    name, _ = yield from s._until((">",), NAME_LIMIT)
    name = name.strip()
    if not name:
        raise Fail(s._src.pos)
    call.name = name
    yield from xml_params(s, call, params)


def _hermes(s, lit, xml: bool):
    src = s._src
    src.pos += len(lit)
    call = _Call(accepted=True)
    try:
        yield from s._ws()
        c = yield from s._peek()
        if c == "{":
            yield from s._call_object(call, bare=False)
        elif c == "<" and xml:
            yield from xml_function(s, call)
        else:
            raise Fail(src.pos, eof=c is None)
        s._call_done(call)
    except Fail as f:
        yield from s._failed(call, f, ends=("</tool_call>",))
        return
    yield from s._ws_lit(("</tool_call>",))
    s._cut(DROP)


def hermes(s, lit):
    return _hermes(s, lit, xml=False)


def hermes_or_xml(s, lit):
    return _hermes(s, lit, xml=True)


def bare_xml_function(s, lit):
    """Qwen3-Coder's `<function=...>` without the opening `<tool_call>` (the closing one may follow)."""
    call = _Call(accepted=True)
    try:
        yield from xml_function(s, call)
        s._call_done(call)
    except Fail as f:
        yield from s._failed(call, f, ends=("</tool_call>",))
        return
    yield from s._ws_lit(("</tool_call>",))
    s._cut(DROP)


HERMES_FORMAT = CallFormat(call=(M("<tool_call>"), S("\n"), *json_call("arguments"), S("\n"), M("</tool_call>")),
                           sep=(OPT(S("\n")),))
CODER_FORMAT = CallFormat(call=(M("<tool_call>"), S("\n<function="), NAME, S(">\n"), PARAMS, S("</function>\n"),
                                M("</tool_call>")),
                          sep=(OPT(S("\n")),), params=ParamStyle("<parameter={key}>\n", "\n</parameter>\n"))

_QWEN_EOT = ("<|im_end|>", "<|endoftext|>")
# (hidden_size, intermediate_size) of the Qwen1.5 dense checkpoints (0.5B ... 110B). Qwen2 and Qwen2.5 share their
# sizes, so the config cannot tell those two apart: the chat template can (<tool_call>).
QWEN1_5_SIZES = {(1024, 2816), (2048, 5504), (2560, 6912), (4096, 11008), (5120, 13696), (5120, 27392),
                  (8192, 24576), (8192, 49152)}


def _is_coder_template(tpl: str) -> bool:
    return "<function=" in tpl and "<parameter=" in tpl


def _qwen2_5(mt, cfg, tpl):
    if mt not in ("qwen2", "qwen2_moe"):
        return False
    if tpl:
        return "<tool_call>" in tpl
    # Qwen1.5 vs Qwen2.5 without a chat template: Qwen1.5's known sizes, else Qwen2.5 (the common case)
    return (cfg.get("hidden_size"), cfg.get("intermediate_size")) not in QWEN1_5_SIZES


QWEN2_5 = Family("qwen2_5", "ToolsCallProcessorQwen2_5", ("qwen2_5", "qwen_2_5", "qwen25"),
                 triggers=(("<tool_call>", hermes),), extra_markers=("</tool_call>",), end_of_turn=_QWEN_EOT,
                 guided=HERMES_FORMAT, detect=_qwen2_5)
QWEN3 = Family("qwen3", "ToolsCallProcessorQwen3", ("qwen3", "qwen3_moe", "hermes"),
               triggers=(("<tool_call>", hermes),), extra_markers=("</tool_call>",), end_of_turn=_QWEN_EOT,
               guided=HERMES_FORMAT,
               detect=lambda mt, cfg, tpl: mt in ("qwen3", "qwen3_moe") and not _is_coder_template(tpl))
QWEN3_CODER = Family("qwen3_coder", "ToolsCallProcessorQwen3Coder", ("qwen3_coder", "qwen3coder"),
                     triggers=(("<tool_call>", hermes_or_xml), ("<function=", bare_xml_function)),
                     extra_markers=("</tool_call>",), end_of_turn=_QWEN_EOT, guided=CODER_FORMAT,
                     detect=lambda mt, cfg, tpl: mt in ("qwen3", "qwen3_moe") and _is_coder_template(tpl))
