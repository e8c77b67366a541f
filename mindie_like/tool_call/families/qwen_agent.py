"""Qwen-Agent's function calls (Qwen1.5 / Qwen2): `✿FUNCTION✿: name` newline `✿ARGS✿: {json}`, also written on
one line (`✿FUNCTION✿name✿ARGS✿{json}`), optionally followed by `✿RESULT✿` / `✿RETURN✿`."""
from __future__ import annotations

from ..call_format import ARGS, NAME, S, CallFormat
from ..family import Family
from ..primitives import DROP, Fail, NAME_LIMIT, _Call
from .hermes import QWEN1_5_SIZES


def qwen_agent(s, lit):
    src = s._src
    src.pos += len(lit)
    call = _Call(accepted=True)
    try:
        yield from s._ws_lit((":",))
        name, term = yield from s._until(("\n", "✿ARGS✿"), NAME_LIMIT)
        name = name.strip()
        if not name:
            raise Fail(src.pos)
        call.name = name
        if term == "\n":
            yield from s._ws()
            yield from s._lit(("✿ARGS✿",))
        yield from s._ws_lit((":",))
        yield from s._args_object(call)
        s._call_done(call)
    except Fail as f:
        yield from s._failed(call, f)
        return
    got = yield from s._ws_lit(("✿RESULT✿", "✿RETURN✿"))
    if got:
        yield from s._ws_lit((":",))
    s._cut(DROP)


def _detect(mt, cfg, tpl):
    if mt == "qwen":
        return True
    if mt in ("qwen2", "qwen2_moe"):
        if tpl:   # a template without <tool_call>: tools go through Qwen-Agent's prompt
            return "<tool_call>" not in tpl or "✿FUNCTION✿" in tpl
        return (cfg.get("hidden_size"), cfg.get("intermediate_size")) in QWEN1_5_SIZES
    return False


QWEN1_5_OR_2 = Family("qwen1_5_or_2", "ToolsCallProcessorQwen1_5_or_2",
                      ("qwen1_5", "qwen_1_5", "qwen2", "qwen_2", "qwen1_5_or_2", "qwen_1_5_or_2"),
                      triggers=(("✿FUNCTION✿", qwen_agent),), extra_markers=("✿ARGS✿", "✿RESULT✿", "✿RETURN✿"),
                      end_of_turn=("<|im_end|>", "<|endoftext|>"),
                      guided=CallFormat(call=(S("✿FUNCTION✿: "), NAME, S("\n✿ARGS✿: "), ARGS), sep=(S("\n"),),
                                        trigger="✿FUNCTION✿"),
                      detect=_detect)
