"""ChatGLM2 (no tool syntax), ChatGLM3 (`name` newline ```` ```python\\ntool_call(k=v)\\n``` ````) and GLM-4
(`name` newline `{json}`): a call is a segment that starts the output or follows `<|assistant|>`."""
from __future__ import annotations

from ..call_format import ARGS, NAME, S, CallFormat
from ..family import Family
from ..primitives import DROP, Fail, _Call
from ..pyargs import py_call_args


def _segment(s, python: bool):
    src = s._src
    call = _Call(accepted=False)
    try:
        if s.spec.line_start_ws:
            yield from s._ws()
        name = yield from s._bare_name(declared=True)
        yield from s._lit(("\n",))
        call.name = name
        if python:
            yield from s._ws()
            yield from s._lit(("```",))
            yield from s._letters()
            yield from s._ws()
            yield from s._lit(("tool_call(",))
            call.accepted = True
            yield from py_call_args(s, call)
        else:
            yield from s._ws()
            c = yield from s._peek()
            if c != "{":
                raise Fail(src.pos, eof=c is None)
            call.accepted = True
            yield from s._json(call.parts.append, call)
        s._call_done(call)
    except Fail as f:
        if call.accepted:
            yield from s._failed(call, f)
        else:
            s._tentative_failed(f)
        return
    if python:
        yield from s._ws_lit(("```",))
    s._cut(DROP)


def name_json(s, lit):
    """GLM-4: `name\\n{json}` at a segment start."""
    s._src.pos += len(lit)
    return _segment(s, python=False)


def python_call(s, lit):
    """ChatGLM3: `name\\n```python\\ntool_call(k=v)\\n```` at a segment start."""
    s._src.pos += len(lit)
    return _segment(s, python=True)


_GLM_EOT = ("<|user|>", "<|observation|>", "<|endoftext|>")


def _chatglm(mt, cfg, name_hint):
    if mt != "chatglm":
        return None
    if cfg.get("padded_vocab_size") == 151552 or "glm-4" in name_hint or "glm4" in name_hint:
        return "glm4"
    return "chatglm2" if "chatglm2" in name_hint else "chatglm3"


def _hint(cfg) -> str:
    return str(cfg.get("_name_or_path", "")).lower()


CHATGLM2 = Family("chatglm2", "ToolsCallProcessorChatglmV2", ("chatglm2_6b", "chatglm_v2_6b", "chatglm_v2", "chatglm2"),
                  passthrough=True, end_of_turn=_GLM_EOT,
                  detect=lambda mt, cfg, tpl: _chatglm(mt, cfg, _hint(cfg)) == "chatglm2")
CHATGLM3 = Family("chatglm3", "ToolsCallProcessorChatglmV3", ("chatglm3_6b", "chatglm_v3_6b", "chatglm_v3", "chatglm3"),
                  triggers=(("<|assistant|>", python_call),), line_start=python_call,
                  end_of_turn=_GLM_EOT, detect=lambda mt, cfg, tpl: _chatglm(mt, cfg, _hint(cfg)) == "chatglm3")
GLM4 = Family("glm4", "ToolsCallProcessorChatglmV4",
              ("chatglm4_9b", "chatglm_v4_9b", "glm_4", "glm_4_9b", "glm4", "chatglm4"),
              triggers=(("<|assistant|>", name_json),), line_start=name_json, line_start_ws=True,
              end_of_turn=_GLM_EOT, guided=CallFormat(call=(NAME, S("\n"), ARGS), multi=False),
              detect=lambda mt, cfg, tpl: mt in ("glm4", "glm") or _chatglm(mt, cfg, _hint(cfg)) == "glm4")
