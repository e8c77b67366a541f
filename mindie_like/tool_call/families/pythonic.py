"""Pythonic calls: a Python list of calls with keyword arguments, `[get_weather(city='SF'), f()]` (`pythonic`,
Llama 3.2 / ToolACE style), and Llama 4's same list inside `<|python_start|>...<|python_end|>`
(`llama4_pythonic`). A bare `[` is only a candidate: it becomes a call once `name(...)` parses (a declared tool's
name when tools are declared), otherwise its text is content."""
from __future__ import annotations

from ..call_format import M, NAME, PARAMS, S, CallFormat, ParamStyle
from ..family import Family
from ..primitives import DROP, Fail, _Call
from ..pyargs import py_call_args

PY_START, PY_END = "<|python_start|>", "<|python_end|>"


def _calls(s, wrapped: bool):
    """The cursor is just after `[`: `name(kwargs)` items separated by commas, then `]`."""
    src = s._src
    done = 0
    while True:
        call = _Call(accepted=wrapped or done > 0)
        try:
            yield from s._ws()
            if done == 0:
                c = yield from s._peek()
                if c == "]":
                    raise Fail(src.pos)
            call.name = yield from s._bare_name(declared=True)
            yield from s._ws()
            yield from s._lit(("(",))
            yield from py_call_args(s, call)
            s._call_done(call)
            done += 1
            yield from s._ws()
            sep = yield from s._lit((",", "]"))
        except Fail as f:
            if call.accepted or call.done:
                if not call.done:
                    yield from s._failed(call, f)
                    return
                src.pos = f.pos
                s._cut(DROP)
                return
            s._tentative_failed(f)
            return
        s._cut(DROP)
        if sep == "]":
            return


def pythonic_list(s, lit):
    s._src.pos += len(lit)
    yield from _calls(s, wrapped=False)


def python_start(s, lit):
    src = s._src
    src.pos += len(lit)
    call = _Call(accepted=True)
    try:
        yield from s._ws()
        yield from s._lit(("[",))
    except Fail as f:
        yield from s._failed(call, f, ends=(PY_END,))
        return
    yield from _calls(s, wrapped=True)
    yield from s._ws_lit((PY_END,))
    s._cut(DROP)


# Values are written as JSON (Python reads JSON strings, numbers and lists; `true`/`false`/`null` are read too),
# each keyword followed by ", " (Python allows the trailing comma).
_PY_PARAMS = ParamStyle("{key}=", ", ", json_strings=True)
_PY_CALL = (NAME, S("("), PARAMS, S(")"))

PYTHONIC = Family(
    "pythonic", "ToolsCallProcessorPythonic", ("pythonic", "llama3_2_pythonic", "olmo3"),
    triggers=(("[", pythonic_list),), end_of_turn=("<|eot_id|>", "<|eom_id|>"),
    guided=CallFormat(prefix=(S("["),), call=_PY_CALL, sep=(S(", "),), suffix=(S("]"),), params=_PY_PARAMS),
    detect=lambda mt, cfg, tpl: "[func_name1(" in tpl and "<|python_start|>" not in tpl, priority=5)
LLAMA4_PYTHONIC = Family(
    "llama4_pythonic", "ToolsCallProcessorLlama4Pythonic", ("llama4_pythonic", "llama4"),
    triggers=((PY_START, python_start), ("[", pythonic_list)), extra_markers=(PY_END,),
    end_of_turn=("<|eot|>", "<|eom|>", "<|end_of_text|>"),
    guided=CallFormat(prefix=(M(PY_START), S("[")), call=_PY_CALL, sep=(S(", "),), suffix=(S("]"), M(PY_END)),
                      params=_PY_PARAMS),
    detect=lambda mt, cfg, tpl: mt == "llama4" and ("[func_name1(" in tpl or PY_START in tpl), priority=5)
