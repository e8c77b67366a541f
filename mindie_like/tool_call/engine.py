"""The one scanner every family runs on.

`ToolCallStream` keeps the not-yet-decided tail of the output in a small buffer with a cursor. Each `feed`
appends the delta and resumes the parser where it stopped, so the work per feed is proportional to the delta
(plus a bounded hold-back: a partial marker, a short token, a name not closed yet). The parser is a Python
generator: it `yield`s when it needs more text and is resumed by the next feed; it never re-reads text it has
consumed (one exception: a marker-less `{...}` candidate that fails is scanned once more as plain JSON, to skip
the whole value; see `_bare_failed`) and never keeps a buffer position across a `yield` (the consumed prefix is
dropped between feeds).

Grammars are small functions composed of shared primitives (`primitives.py`: literal, whitespace, bounded
name, the canonical JSON scanner; `xml_params.py`: XML parameters typed by the schema; `pyargs.py`: Python
keyword arguments). Each family (`families/*.py`) says which grammar each of its markers starts; failure
handling and lenient recovery are in `recovery.py`.

Text is attributed to one of four kinds as it is consumed (`_cut`):
- CONTENT: outside any call markup. Emitted at once, except trailing whitespace (held until more content
  comes, dropped at the end when a call was found) and while output is blocked (below).
- DROP: markup of a call that parsed. Never emitted.
- REASONING: a family whose grammar sorts channels (gpt-oss) sends reasoning text as `reasoning_content`.
- PENDING: markup whose fate is open: structural markers and calls that failed to parse. Dropped as soon as (or
  once) any call parses; when none has parsed yet it is held, with all content after it (order is kept), and
  released as content at the end if no call ever parses ("no call parses: content is the whole text").
A call cut off by the end of the output (its JSON incomplete) is CONTENT.

The non-streaming `decode` runs this same machine over the whole text, so streaming and non-streaming agree by
construction; the tests check that every split of the text gives the same result.
"""
from __future__ import annotations

import logging
from functools import partial

from .family import Family
from .primitives import (CONTENT, PENDING, REASONING, _NAME_FULL, _NAME_RUN, Fail, Primitives, _Call, _Src, _alt,
                         _hold_point, _prefixes, _tool_index, make_call_id)
from .call_object import CallObject
from .recovery import Recovery

logger = logging.getLogger("mindie_like.tool_call")

FamilySpec = Family   # the name this type had before families became objects


class ToolCallStream(Primitives, CallObject, Recovery):
    """Per-request incremental tool-call parser. feed(delta) / finish() return OpenAI delta dicts."""

    def __init__(self, spec: Family, tools=None, *, lenient: bool = True, request_id=None, report_calls: bool = True):
        self.spec = spec
        self.request_id = request_id
        self.report_calls = report_calls   # False: calls are parsed but dropped (harmony without tools)
        self.in_reasoning = False          # inside a reasoning channel (families with channels)
        self.tool_names, self._schemas = _tool_index(tools)
        self._name_prefixes = (frozenset(n[:k] for n in self.tool_names for k in range(len(n) + 1))
                               if self.tool_names else frozenset())
        self.lenient = bool(lenient) and self.tool_names is not None and not spec.passthrough
        handlers = {lit: partial(g, self) for lit, g in spec.triggers}
        self._restarts = tuple(handlers)
        # the family's own markers end the skip over a JSON value that is not a call (`_skip_value`)
        self._stop_re = _alt(self._restarts) if self._restarts else None
        self._stop_prefixes = _prefixes(self._restarts)
        self._stop_max = max((len(x) for x in self._restarts), default=1)
        if spec.bare_json or self.lenient:
            handlers["{"] = self._g_bare
        if self.lenient:
            handlers["```"] = self._g_fence
        self._handlers = handlers
        self._trig_re = _alt(handlers) if handlers else None
        self._trig_prefixes = _prefixes(handlers)
        self._trig_max = max((len(x) for x in handlers), default=1)
        self._src = _Src()
        self._out: list[tuple] = []
        self._calls_open = 0
        self._completed: list[_Call] = []
        self._content_log: list[str] = []
        self._reasoning_log: list[str] = []
        self.successes = 0
        self._blocked = False
        self._held: list[tuple[int, str]] = []
        self._ws_pending = ""
        self._content_started = False
        self.dead = False
        self._closed = False
        self._gen = self._run()

    # ------------------------------------------------------------------ public
    def feed(self, delta: str) -> list[dict]:
        if self._closed or not delta:
            return []
        if self.dead:
            self._emit_raw(delta)
            return self._drain()
        src = self._src
        if src.mark < src.pos:
            src.rec.append(src.buf[src.mark:src.pos])
        src.buf = src.buf[src.pos:] + delta
        src.pos = src.mark = 0
        try:
            next(self._gen)
        except StopIteration:
            pass
        except Exception:  # never raise to the caller
            self._die()
        return self._drain()

    def finish(self) -> list[dict]:
        if self._closed:
            return []
        self._closed = True
        if not self.dead:
            src = self._src
            src.final = True
            try:
                next(self._gen)
            except StopIteration:
                pass
            except Exception:
                self._die()
            else:
                self._die()  # the parser must end at the end of the text
        if not self.dead:
            if self._blocked:  # no call ever parsed: held markup is content after all
                self._blocked = False
                for _, t in self._held:
                    self._emit_content_ws(t)
                self._held = []
            if not self.successes and self._ws_pending:
                self._emit_raw(self._ws_pending)
            self._ws_pending = ""
        return self._drain()

    @property
    def tool_calls(self) -> list[dict]:
        """Calls that parsed completely, in order (what decode reports)."""
        return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": "".join(c.parts)}}
                for c in self._completed]

    @property
    def content(self) -> str:
        return "".join(self._content_log)

    @property
    def reasoning(self) -> str:
        return "".join(self._reasoning_log)

    def result(self) -> dict:
        out = {"content": self.content, "tool_calls": self.tool_calls}
        if self.spec.channels:
            out["reasoning_content"] = self.reasoning
        return out

    # ------------------------------------------------------------------ output
    def _drain(self) -> list[dict]:
        out, self._out = self._out, []
        res: list[dict] = []
        last = None  # ("c",), ("r",) or ("a", index)
        for item in out:
            kind = item[0]
            if kind == "c" or kind == "r":
                key = "content" if kind == "c" else "reasoning_content"
                if last == (kind,):
                    res[-1][key] += item[1]
                else:
                    res.append({key: item[1]})
                    last = (kind,)
            elif kind == "h":
                _, idx, cid, name = item
                res.append({"tool_calls": [{"index": idx, "id": cid, "type": "function",
                                            "function": {"name": name, "arguments": ""}}]})
                last = None
            else:
                _, idx, frag = item
                if last == ("a", idx):
                    res[-1]["tool_calls"][0]["function"]["arguments"] += frag
                else:
                    res.append({"tool_calls": [{"index": idx, "function": {"arguments": frag}}]})
                    last = ("a", idx)
        return res

    def _emit_raw(self, text: str) -> None:
        if text:
            self._out.append(("c", text))
            self._content_log.append(text)
            self._content_started = True

    def _emit_content_ws(self, text: str) -> None:
        t = self._ws_pending + text
        core = t.rstrip()
        if not core:
            self._ws_pending = t
            return
        self._ws_pending = t[len(core):]
        if not self._content_started and self.successes:
            core = core.lstrip()
        self._emit_raw(core)

    def _content(self, text: str) -> None:
        if self._blocked:
            self._held.append((CONTENT, text))
        else:
            self._emit_content_ws(text)

    def _pending(self, text: str) -> None:
        if self.successes:
            return
        self._blocked = True
        self._held.append((PENDING, text))

    def _cut(self, kind: int) -> None:
        src = self._src
        if src.rec:
            src.rec.append(src.buf[src.mark:src.pos])
            text = "".join(src.rec)
            src.rec.clear()
        else:
            text = src.buf[src.mark:src.pos]
        src.mark = src.pos
        if text:
            if kind == CONTENT:
                self._content(text)
            elif kind == PENDING:
                self._pending(text)
            elif kind == REASONING:
                self._out.append(("r", text))
                self._reasoning_log.append(text)

    def _die(self) -> None:
        logger.exception("tool-call parser error (request %s); remaining text is returned as content",
                         self.request_id)
        self.dead = True
        src = self._src
        rest = [t for _, t in self._held] + src.rec + [src.buf[src.mark:]]
        self._held, self._blocked = [], False
        self._emit_raw(self._ws_pending + "".join(rest))
        self._ws_pending = ""
        src.buf, src.pos, src.mark, src.rec = "", 0, 0, []

    # ------------------------------------------------------------------ calls
    def _sync(self, call: _Call) -> None:
        if call.opened:
            parts = call.parts
            if len(parts) > call.sent:
                frag = "".join(parts[call.sent:])
                call.sent = len(parts)
                if frag:
                    self._out.append(("a", call.index, frag))
        elif call.accepted and call.name is not None and call.parts:
            # a call is announced once its arguments have a valid token beyond the opening brace
            if len(call.parts) > 1 or call.parts[0] != "{":
                self._open(call)

    def _open(self, call: _Call) -> None:
        call.opened = True
        call.index = self._calls_open
        self._calls_open += 1
        call.id = call.id or make_call_id(self.spec.id_style)
        self._out.append(("h", call.index, call.id, call.name))
        self._sync(call)

    def _call_done(self, call: _Call) -> None:
        if not call.parts:
            call.parts.append("{}")
        call.accepted = True
        if call.opened:
            self._sync(call)
        else:
            self._open(call)
        call.done = True
        self._completed.append(call)
        self.successes += 1
        if self._blocked:
            self._blocked = False
            held, self._held = self._held, []
            for kind, t in held:
                if kind == CONTENT:
                    self._emit_content_ws(t)

    def _call_fail(self, call: _Call, f: Fail) -> None:
        if f.eof:
            logger.info("output ended inside a tool call (request %s): kept as content", self.request_id)
        else:
            logger.warning("malformed %s tool call%s dropped (request %s)", self.spec.family,
                           f" {call.name!r}" if call.name else "", self.request_id)
        if call.opened:
            logger.warning("tool call %d of request %s failed after it started streaming",
                           call.index, self.request_id)

    def _name_ok(self, name: str, declared: bool) -> bool:
        if not name:
            return False
        if declared:
            return name in self.tool_names if self.tool_names is not None else bool(_NAME_FULL.fullmatch(name))
        return True

    def _name_prefix_ok(self, partial: str) -> bool:
        if self.tool_names is not None:
            return partial in self._name_prefixes
        return len(partial) <= 64 and _NAME_RUN.fullmatch(partial) is not None

    # ------------------------------------------------------------------ main loop
    def _run(self):
        src = self._src
        if self.spec.passthrough or self._trig_re is None and not self.spec.line_start:
            while True:
                src.pos = len(src.buf)
                self._cut(CONTENT)
                if src.final:
                    return
                yield
        if self.spec.line_start:
            yield from self.spec.line_start(self, "")
        rx, handlers = self._trig_re, self._handlers
        while True:
            buf, pos = src.buf, src.pos
            m = rx.search(buf, pos)
            if m is None:
                src.pos = len(buf) if src.final else _hold_point(buf, pos, self._trig_prefixes, self._trig_max)
                self._cut(CONTENT)
                if src.final:
                    return
                yield
                continue
            src.pos = m.start()
            self._cut(CONTENT)
            yield from handlers[m.group()](m.group())

