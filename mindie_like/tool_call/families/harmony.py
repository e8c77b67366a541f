"""gpt-oss (OpenAI's harmony format). The output is a sequence of messages, each
`[<|start|>assistant][ to=RECIPIENT]<|channel|>CHANNEL[ to=RECIPIENT][ <|constrain|>json]<|message|>BODY` ended
by `<|end|>`, `<|call|>`, `<|return|>` or the next `<|start|>` (the stop tokens may be cut off). Channel
`analysis` is reasoning, `commentary` and `final` are content, and a message to `functions.NAME` (the recipient
in either header position) is a call whose body is the JSON arguments. Messages to built-in tools (`browser.*`,
`python`, `container.*`) are neither content nor calls. The grammar sorts all of it, so this family needs no
reasoning tags."""
from __future__ import annotations

import re

from ..call_format import ARGS, M, NAME, S, CallFormat
from ..family import Family
from ..primitives import CONTENT, DROP, REASONING, Fail, _Call, _alt, _hold_point, _prefixes

START, CHANNEL, MESSAGE, CONSTRAIN = "<|start|>", "<|channel|>", "<|message|>", "<|constrain|>"
ENDS = ("<|end|>", "<|call|>", "<|return|>")
HEADER_LIMIT = 512
_RECIPIENT = re.compile(r"\bto=([^\s<]+)")
_CHANNEL = re.compile(re.escape(CHANNEL) + r"\s*([A-Za-z_]+)")
_TO_AT_START = re.compile(r"[ \t\r\n]*to=")
_LEADING_WS = re.compile(r"[ \t\r\n]*")
_STOPS = ENDS + (START, CHANNEL)
_STOP_RE, _STOP_PREFIXES, _STOP_MAX = _alt(_STOPS), _prefixes(_STOPS), max(map(len, _STOPS))


def harmony_start(s, lit):
    """The output may begin inside a header (the prompt ends with `<|start|>assistant`): ` to=functions.f<|channel|>`."""
    src = s._src
    while not src.final:    # wait until the start is known to be, or not to be, ` to=`
        j = _LEADING_WS.match(src.buf, src.pos).end()
        head = src.buf[j:j + 3]
        if len(head) == 3 or (head and not "to=".startswith(head)) or j - src.pos > HEADER_LIMIT:
            break
        yield
    if _TO_AT_START.match(src.buf, src.pos):
        yield from harmony_message(s, "")


def harmony_message(s, lit):
    src = s._src
    src.pos += len(lit)
    try:
        rest, _ = yield from s._until((MESSAGE,), HEADER_LIMIT)
    except Fail as f:
        # not a header after all (or cut off inside one): markup, never content
        src.pos = len(src.buf) if f.eof else f.pos
        s._cut(DROP)
        return
    header = lit + rest
    s._cut(DROP)
    to = _RECIPIENT.search(header)
    ch = _CHANNEL.search(header)
    recipient = to.group(1) if to else None
    channel = ch.group(1).lower() if ch else ""
    if recipient is None:
        yield from _body(s, REASONING if channel == "analysis" else CONTENT)
    elif recipient.startswith("functions.") and len(recipient) > len("functions.") and s.report_calls:
        yield from _call(s, recipient[len("functions."):])
    else:
        yield from _body(s, DROP)        # a built-in tool's input: not ours to show


def _body(s, kind: int):
    """Message text, streamed as `kind`, up to its end marker (consumed) or the next header (left)."""
    src = s._src
    s.in_reasoning = kind == REASONING
    while True:
        buf, pos = src.buf, src.pos
        m = _STOP_RE.search(buf, pos)
        if m is None:
            src.pos = len(buf) if src.final else _hold_point(buf, pos, _STOP_PREFIXES, _STOP_MAX)
            s._cut(kind)
            if src.final:
                return
            yield
            continue
        src.pos = m.start()
        s._cut(kind)
        s.in_reasoning = False
        if m.group() in ENDS:
            src.pos = m.end()
            s._cut(DROP)
        return


def _call(s, name: str):
    src = s._src
    call = _Call(accepted=True)
    call.name = name
    try:
        yield from s._args_object(call)
        s._call_done(call)
    except Fail as f:
        s._call_fail(call, f)
        src.pos = len(src.buf) if f.eof else f.pos
        yield from s._skip(ENDS, (START, CHANNEL))
        s._cut(DROP)
        return
    yield from s._ws_lit(ENDS)
    s._cut(DROP)


GPT_OSS = Family(
    "gpt_oss", "ToolsCallProcessorGptOss", ("gpt_oss", "gpt-oss", "harmony", "openai"),
    triggers=((START, harmony_message), (CHANNEL, harmony_message)), line_start=harmony_start,
    extra_markers=(MESSAGE, CONSTRAIN) + ENDS, reasoning=None, channels=True,
    end_of_turn=("<|return|>", "<|call|>"),
    guided=CallFormat(call=(M(CHANNEL), S("commentary to=functions."), NAME, S(" "), M(CONSTRAIN), S("json"),
                            M(MESSAGE), ARGS),
                      # every harmony message starts with <|channel|>: no marker tells a call from text early
                      multi=False, trigger="",
                      reasoning=(CHANNEL + "analysis" + MESSAGE, "<|end|>" + START + "assistant")),
    detect=lambda mt, cfg, tpl: mt == "gpt_oss" or CHANNEL in tpl, priority=10)
