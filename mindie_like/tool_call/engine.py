"""The one scanner every family runs on.

`ToolCallStream` keeps the not-yet-decided tail of the output in a small buffer with a cursor. Each `feed`
appends the delta and resumes the parser where it stopped, so the work per feed is proportional to the delta
(plus a bounded hold-back: a partial marker, a short token, a name not closed yet). The parser is a Python
generator: it `yield`s when it needs more text and is resumed by the next feed; it never re-reads text it has
consumed (one exception: a marker-less `{...}` candidate that fails is scanned once more as plain JSON, to skip
the whole value; see `_bare_failed`) and never keeps a buffer position across a `yield` (the consumed prefix is
dropped between feeds).

Grammars (`_g_*`) are small compositions of shared primitives (literal, whitespace, bounded name, the canonical
JSON scanner, Python keyword arguments via `ast`, XML parameters typed by the schema). `families.py` says which
grammar each marker of each family starts.

Text is attributed to one of three kinds as it is consumed (`_cut`):
- CONTENT: outside any call markup. Emitted at once, except trailing whitespace (held until more content
  comes, dropped at the end when a call was found) and while output is blocked (below).
- DROP: markup of a call that parsed. Never emitted.
- PENDING: markup whose fate is open: structural markers and calls that failed to parse. Dropped as soon as (or
  once) any call parses; when none has parsed yet it is held, with all content after it (order is kept), and
  released as content at the end if no call ever parses ("no call parses: content is the whole text").
A call cut off by the end of the output (its JSON incomplete) is CONTENT: a half call is never reported.

The non-streaming `decode` runs this same machine over the whole text, so streaming and non-streaming agree by
construction; the tests check that every split of the text gives the same result.
"""
from __future__ import annotations

import ast
import json
import logging
import re
import secrets
import string

from .families import (
    DS_CALL_BEGIN, DS_CALL_END, DS_CALLS_BEGIN, DS_CALLS_END, DS_SEP, DSML_CALLS_END, DSML_INVOKE,
    DSML_INVOKE_END, DSML_PARAM, DSML_PARAM_END, FamilySpec,
)
from .json_stream import DONE, EOF, ERR, NEED, JsonScanner, canonical_json, encode_basestring

logger = logging.getLogger("mindie_like.tool_call")

_ALNUM = string.ascii_letters + string.digits
_WS = re.compile(r"[ \t\n\r]*")
_NAME_RUN = re.compile(r"[A-Za-z0-9_.\-]*")
_NAME_FULL = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_LETTERS = re.compile(r"[A-Za-z]*")
_QSTR = re.compile(r'"((?:[^"\\]|\\[\s\S])*)"')
_ATTR = re.compile(r'([A-Za-z_][\w-]*)\s*=\s*"([^"]*)"')
NAME_LIMIT = 128        # longest function name we wait for
WS_LOOKAHEAD = 256      # longest whitespace run we look across for an optional marker
HEAD_LIMIT = 256        # longest `{ "first key":` we wait for to tell a JSON object from a brace in prose
SKIP_CHUNK = 16, 4096   # a JSON value that is not a call is scanned in growing chunks, so the work (slices,
                        # marker search) is proportional to the value, not to the rest of the buffer
# `{` + whitespace + `}` or a first key and its colon: the brace opens a JSON object (else it is prose)
_OBJ_HEAD = re.compile(r'\{[ \t\n\r]*(?:\}|"(?:[^"\\\x00-\x1f]|\\.)*"[ \t\n\r]*:)')
_OBJ_HEAD_PART = re.compile(r'\{[ \t\n\r]*(?:"(?:[^"\\\x00-\x1f]|\\.)*(?:\\|"[ \t\n\r]*)?)?')

CONTENT, DROP, PENDING = 0, 1, 2


def make_call_id(style: str = "call") -> str:
    if style == "mistral":
        return "".join(secrets.choice(_ALNUM) for _ in range(9))
    return "call_" + "".join(secrets.choice(_ALNUM) for _ in range(8))


class Fail(Exception):
    """The text at `pos` cannot continue the current call. eof: it ran out (cut-off output) instead."""

    def __init__(self, pos: int, eof: bool = False):
        super().__init__(pos, eof)
        self.pos = pos
        self.eof = eof


class _Src:
    __slots__ = ("buf", "pos", "final", "mark", "rec")

    def __init__(self):
        self.buf = ""     # undecided tail of the output
        self.pos = 0      # parse cursor in buf
        self.final = False
        self.mark = 0     # start of consumed text not yet attributed by _cut
        self.rec: list[str] = []  # consumed, unattributed text from before the last compaction


class _Call:
    __slots__ = ("name", "parts", "sent", "opened", "accepted", "index", "id", "string_args", "done")

    def __init__(self, accepted: bool):
        self.name: str | None = None
        self.parts: list[str] = []   # canonical argument fragments
        self.sent = 0
        self.opened = False
        self.accepted = accepted
        self.index = -1
        self.id = ""
        self.string_args = False
        self.done = False


def _discard(_s: str) -> None:
    pass


def _tool_index(tools) -> tuple[frozenset[str] | None, dict[str, dict]]:
    if not tools:
        return None, {}
    names, schemas = [], {}
    for t in tools:
        fn = t.get("function") if isinstance(t, dict) else getattr(t, "function", None)
        if fn is None:
            continue
        if isinstance(fn, dict):
            name, params = fn.get("name"), fn.get("parameters")
        else:
            name, params = getattr(fn, "name", None), getattr(fn, "parameters", None)
        if isinstance(name, str) and name:
            names.append(name)
            schemas[name] = params if isinstance(params, dict) else {}
    return (frozenset(names) or None), schemas


def _alt(lits) -> re.Pattern:
    return re.compile("|".join(re.escape(x) for x in sorted(lits, key=len, reverse=True)))


def _prefixes(lits) -> frozenset[str]:
    return frozenset(x[:k] for x in lits for k in range(1, len(x)))


def _hold_point(buf: str, pos: int, prefixes: frozenset[str], maxlen: int) -> int:
    """Start of a suffix of buf[pos:] that is a proper prefix of a marker (held back), else len(buf)."""
    n = len(buf)
    for k in range(min(maxlen - 1, n - pos), 0, -1):
        if buf[n - k:] in prefixes:
            return n - k
    return n


class _PyCallArgs:
    """Finds the `)` that closes `tool_call(` while skipping Python strings and brackets; collects the text."""

    __slots__ = ("depth", "q", "triple", "esc", "parts")

    def __init__(self):
        self.depth = 0
        self.q = ""
        self.triple = False
        self.esc = False
        self.parts: list[str] = []

    def scan(self, buf: str, pos: int, final: bool) -> tuple[int, int]:
        n = len(buf)
        i = pos
        while i < n:
            ch = buf[i]
            if self.q:
                if self.esc:
                    self.esc = False
                elif ch == "\\":
                    self.esc = True
                elif ch == self.q:
                    if not self.triple:
                        self.q = ""
                    elif buf.startswith(ch * 3, i):
                        self.q = ""
                        i += 3
                        continue
                    elif n - i < 3 and buf[i:] == ch * (n - i) and not final:
                        break
                i += 1
                continue
            if ch == "'" or ch == '"':
                if buf.startswith(ch * 3, i):
                    self.q, self.triple = ch, True
                    i += 3
                    continue
                if n - i < 3 and buf[i:] == ch * (n - i) and not final:
                    break
                self.q, self.triple = ch, False
            elif ch in "([{":
                self.depth += 1
            elif ch in ")]}":
                if self.depth == 0:
                    if ch != ")":
                        return ERR, i
                    self.parts.append(buf[pos:i])
                    return DONE, i + 1
                self.depth -= 1
            i += 1
        self.parts.append(buf[pos:i])
        return (EOF if final else NEED), i


def _py_kwargs_to_json(text: str) -> str | None:
    try:
        tree = ast.parse("f(" + text + ")", mode="eval")
        node = tree.body
        if not isinstance(node, ast.Call) or node.args:
            return None
        out = {}
        for kw in node.keywords:
            if kw.arg is None:
                return None
            out[kw.arg] = ast.literal_eval(kw.value)
        return json.dumps(out, ensure_ascii=False, allow_nan=False)
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
        return None


def _schema_type(props: dict, key: str):
    spec = props.get(key) if isinstance(props, dict) else None
    if not isinstance(spec, dict):
        return None
    t = spec.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), None)
    if t is None and "enum" in spec:
        return "string"
    if t is None and ("properties" in spec):
        return "object"
    return t.lower() if isinstance(t, str) else None


def _is_string_type(t) -> bool:
    return t in ("string", "str", "text", "varchar", "char", "enum")


def convert_param(raw: str, ptype) -> object:
    """A raw XML parameter value -> Python value, typed by the schema's type (qwen3_coder, DSML)."""
    if ptype is None:
        return raw
    if _is_string_type(ptype):
        return raw
    s = raw.strip()
    if s.lower() == "null":
        return None
    if ptype in ("integer", "int"):
        try:
            return int(s)
        except ValueError:
            pass
        ptype = "number"
    if ptype in ("number", "float", "double"):
        try:
            f = float(s)
        except ValueError:
            return raw
        if f != f or f in (float("inf"), float("-inf")):
            return raw
        return int(f) if f.is_integer() and not any(ch in s for ch in ".eE") else f
    if ptype in ("boolean", "bool"):
        low = s.lower()
        return True if low == "true" else False if low == "false" else raw
    for loader in (json.loads, ast.literal_eval):
        try:
            v = loader(s)
            json.dumps(v, allow_nan=False)
            return v
        except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
            continue
    return raw


class ToolCallStream:
    """Per-request incremental tool-call parser. feed(delta) / finish() return OpenAI delta dicts."""

    def __init__(self, spec: FamilySpec, tools=None, *, lenient: bool = True, request_id=None):
        self.spec = spec
        self.request_id = request_id
        self.tool_names, self._schemas = _tool_index(tools)
        self._name_prefixes = (frozenset(n[:k] for n in self.tool_names for k in range(len(n) + 1))
                               if self.tool_names else frozenset())
        self.lenient = bool(lenient) and self.tool_names is not None and not spec.passthrough
        handlers = {lit: getattr(self, "_g_" + g) for lit, g in spec.triggers}
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

    def result(self) -> dict:
        return {"content": self.content, "tool_calls": self.tool_calls}

    # ------------------------------------------------------------------ output
    def _drain(self) -> list[dict]:
        out, self._out = self._out, []
        res: list[dict] = []
        last = None  # ("c",) or ("a", index)
        for item in out:
            kind = item[0]
            if kind == "c":
                if last == ("c",):
                    res[-1]["content"] += item[1]
                else:
                    res.append({"content": item[1]})
                    last = ("c",)
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
        call.id = make_call_id(self.spec.id_style)
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

    # ------------------------------------------------------------------ primitives
    def _ws(self):
        src = self._src
        while True:
            src.pos = _WS.match(src.buf, src.pos).end()
            if src.pos < len(src.buf) or src.final:
                return
            yield

    def _peek(self):
        src = self._src
        while src.pos >= len(src.buf):
            if src.final:
                return None
            yield
        return src.buf[src.pos]

    def _lit(self, lits, required: bool = True):
        """One of the literals `lits` (none a prefix of another) at the cursor; None when absent (optional)."""
        src = self._src
        while True:
            buf, pos = src.buf, src.pos
            partial = False
            for lit in lits:
                if buf.startswith(lit, pos):
                    src.pos = pos + len(lit)
                    return lit
                if not partial and len(buf) - pos < len(lit) and lit.startswith(buf[pos:]):
                    partial = True
            if partial and not src.final:
                yield
                continue
            if required:
                raise Fail(pos, eof=partial)
            return None

    def _ws_lit(self, lits):
        """Optional whitespace + one of `lits`, consumed only when the literal is there."""
        src = self._src
        while True:
            buf, pos = src.buf, src.pos
            j = _WS.match(buf, pos).end()
            if j - pos > WS_LOOKAHEAD:
                return None
            if j >= len(buf):
                if src.final:
                    return None
                yield
                continue
            partial = False
            for lit in lits:
                if buf.startswith(lit, j):
                    src.pos = j + len(lit)
                    return lit
                if len(buf) - j < len(lit) and lit.startswith(buf[j:]):
                    partial = True
            if partial and not src.final:
                yield
                continue
            return None

    def _until(self, terms, limit: int):
        """Text up to the first of `terms` (consumed); at most `limit` characters."""
        src = self._src
        rx = _alt(terms)
        window = limit + max(len(t) for t in terms)
        while True:
            buf, pos = src.buf, src.pos
            m = rx.search(buf, pos, min(len(buf), pos + window))
            if m is not None and m.start() - pos <= limit:
                src.pos = m.end()
                return buf[pos:m.start()], m.group()
            if len(buf) - pos >= window:
                raise Fail(pos)
            if src.final:
                raise Fail(pos, eof=True)
            yield

    def _letters(self, allowed: tuple[str, ...] | None = None):
        """A run of letters (a fence's language tag); with `allowed`, fail as soon as it cannot be one."""
        src = self._src
        while True:
            buf, pos = src.buf, src.pos
            j = _LETTERS.match(buf, pos).end()
            if j - pos > 32:
                raise Fail(pos)
            if allowed is not None:
                low = buf[pos:j].lower()
                if not any(a.startswith(low) for a in allowed) or (j < len(buf) and low not in allowed):
                    raise Fail(pos)
            if j < len(buf) or src.final:
                src.pos = j
                return buf[pos:j]
            yield

    def _bare_name(self, declared: bool):
        """An identifier-like function name, not quoted (Mistral v11, GLM-4 / ChatGLM3 name lines)."""
        src = self._src
        while True:
            buf, pos = src.buf, src.pos
            j = _NAME_RUN.match(buf, pos).end()
            name = buf[pos:j]
            if len(name) > NAME_LIMIT or (declared and not self._name_prefix_ok(name)):
                raise Fail(pos)
            if j < len(buf):
                if not self._name_ok(name, declared):
                    raise Fail(pos)
                src.pos = j
                return name
            if src.final:
                raise Fail(pos, eof=True)
            yield

    def _qstring(self, limit: int, check: bool = False):
        """A short JSON string (key or name) at the cursor, decoded; consumed only once complete."""
        src = self._src
        while True:
            buf, pos = src.buf, src.pos
            m = _QSTR.match(buf, pos, min(len(buf), pos + limit + 2))
            if m is not None:
                try:
                    s = json.loads(m.group(0), strict=False)
                except ValueError:
                    raise Fail(pos) from None
                if check and not self._name_ok(s, True):
                    raise Fail(pos)
                src.pos = m.end()
                return s
            if len(buf) - pos >= limit + 2:
                raise Fail(pos)
            if check:
                partial = buf[pos + 1:]
                if "\\" not in partial and not self._name_prefix_ok(partial):
                    raise Fail(pos)
            if src.final:
                raise Fail(pos, eof=True)
            yield

    def _json(self, emit, call: _Call | None = None, raw_string: bool = False):
        src = self._src
        sc = JsonScanner(emit, raw_string=raw_string)
        while True:
            st, src.pos = sc.scan(src.buf, src.pos, src.final)
            if call is not None:
                self._sync(call)
            if st == DONE:
                return
            if st == ERR:
                raise Fail(src.pos)
            if st == EOF:
                raise Fail(src.pos, eof=True)
            yield

    def _args_object(self, call: _Call):
        """Arguments written as a JSON object right here (after optional whitespace)."""
        yield from self._ws()
        c = yield from self._peek()
        if c != "{":
            raise Fail(self._src.pos, eof=c is None)
        yield from self._json(call.parts.append, call)

    def _fence_open(self):
        got = yield from self._ws_lit(("```",))
        if got:
            yield from self._letters()

    def _skip(self, ends=(), starts=()):
        """After a malformed call: skip to just after one of `ends` or just before one of `starts`."""
        lits = tuple(ends) + tuple(starts)
        src = self._src
        if not lits:
            while True:
                src.pos = len(src.buf)
                if src.final:
                    return
                yield
        rx, pre, mx = _alt(lits), _prefixes(lits), max(len(x) for x in lits)
        while True:
            buf, pos = src.buf, src.pos
            m = rx.search(buf, pos)
            if m is not None:
                src.pos = m.end() if m.group() in ends else m.start()
                return
            if src.final:
                src.pos = len(buf)
                return
            src.pos = _hold_point(buf, pos, pre, mx)
            yield

    def _failed(self, call: _Call, f: Fail, ends=(), starts=None):
        """Attribute a failed call's text: cut off at the end -> content; malformed -> pending, then resync."""
        self._call_fail(call, f)
        src = self._src
        if f.eof:
            src.pos = len(src.buf)
            self._cut(CONTENT)
            return
        src.pos = f.pos
        yield from self._skip(ends, self._restarts if starts is None else starts)
        self._cut(PENDING)

    def _consumed(self) -> int:
        """How much text has been consumed since the last `_cut` (where the current candidate started)."""
        src = self._src
        return sum(map(len, src.rec)) + src.pos - src.mark

    def _bare_failed(self, call: _Call, f: Fail, obj: int):
        """A marker-less candidate (a bare `{...}` or a ```` ```json ```` fence whose object starts `obj`
        characters after the candidate's start) that is not a call. Cut off at the end: content. Otherwise the
        JSON value its `{` opens is skipped whole (`_skip_value`), so an object nested inside it is never taken
        for a call: content when the candidate had not become a call, pending markup when it had."""
        src = self._src
        if call.accepted:
            self._call_fail(call, f)
        if f.eof:
            src.pos = len(src.buf)
            self._cut(CONTENT)
            return
        # Bring the candidate's text back into the buffer (it was consumed since the last cut) and scan it
        # once more as plain JSON: at most once per candidate, since objects inside it are never candidates.
        if src.rec:  # only while streaming, where the buffer is short: (the candidate) + (the last delta)
            floor = self._consumed() - src.pos + f.pos
            src.buf = "".join(src.rec) + src.buf[src.mark:]
            src.rec = []
            src.mark, src.pos = 0, obj
        else:
            floor, src.pos = f.pos, src.mark + obj
        yield from self._skip_value(PENDING if call.accepted else CONTENT, floor)

    def _skip_value(self, kind: int, floor: int):
        """The cursor is on a `{` that is not a call. When it opens a JSON object (`{}` or `{"key":`), skip the
        whole value, releasing its text as `kind` while scanning (strict JSON: a raw newline inside a string
        is an error); the scan resumes after the value, or where the text stops being JSON, or at one of the
        family's own markers (never before `floor`: the candidate's own parse already read the text up to there
        as part of its object), or (a brace in prose) right after the `{`."""
        src = self._src
        # is it an object at all?
        while True:
            buf, pos = src.buf, src.pos
            end = min(len(buf), pos + HEAD_LIMIT)
            if _OBJ_HEAD.match(buf, pos, end) is not None:
                break
            if src.final or end - pos >= HEAD_LIMIT or _OBJ_HEAD_PART.match(buf, pos, end).end() < len(buf):
                # a brace in prose: look again right after it (a `{` inside what looked like a first key may
                # start a call), a bounded rescan
                src.pos = pos + 1 if floor - pos <= HEAD_LIMIT else floor
                self._cut(kind)
                return
            floor -= pos
            yield
            floor += src.pos
        sc = JsonScanner(_discard, strict=True)
        stop_re, stop_max = self._stop_re, self._stop_max
        chunk = SKIP_CHUNK[0]
        while True:
            buf, pos = src.buf, src.pos
            n = len(buf)
            at = max(pos, floor)
            lim = min(n, at + chunk)
            more = lim < n  # more of the buffer to scan before the next yield
            marker = False
            if stop_re is not None:
                m = stop_re.search(buf, at, min(n, lim + stop_max - 1))
                if m is not None and m.start() < lim:
                    lim, marker, more = m.start(), True, False
                elif not more and not src.final:
                    lim = _hold_point(buf, at, self._stop_prefixes, stop_max)
            last = lim == n and src.final
            st, p = sc.scan(buf[pos:lim], 0, last)  # positions relative to pos: no copy of the consumed text
            p += pos
            if st == DONE or st == ERR:
                src.pos = max(p, floor)
                self._cut(kind)
                return
            if st == EOF or marker:
                src.pos = max(lim, floor)
                self._cut(kind)
                return
            src.pos = p
            self._cut(kind)
            if more:
                # grow the chunk (up to the cap while scanning progresses; a longer token: without cap)
                chunk = min(chunk * 2, SKIP_CHUNK[1]) if p > pos else chunk * 2
                continue
            floor -= p
            yield
            floor += src.pos

    def _tentative_failed(self, f: Fail) -> None:
        """A marker-less candidate that never became a call: its text is ordinary content."""
        src = self._src
        src.pos = len(src.buf) if f.eof else f.pos
        self._cut(CONTENT)

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
            yield from self._segment()
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

    # ------------------------------------------------------------------ grammars
    def _call_object(self, call: _Call, bare: bool):
        """`{"name": ..., "arguments"|"parameters": ...}` at the cursor. bare: no marker announced it, so
        "name" must come first (and be declared when tools are), and it only becomes a call once the
        arguments key is seen."""
        src = self._src
        src.pos += 1  # "{"
        first = True
        have_name = have_args = False
        while True:
            yield from self._ws()
            c = yield from self._peek()
            if c is None:
                raise Fail(src.pos, eof=True)
            if c == "}" and first and not bare:
                src.pos += 1
                break
            if c != '"':
                raise Fail(src.pos)
            key = yield from self._qstring(16 if bare and first else 64)
            if bare and (key == "description" or first and key != "name"):
                raise Fail(src.pos)  # not a call; "description": a tool definition being echoed
            yield from self._ws()
            yield from self._lit((":",))
            yield from self._ws()
            c = yield from self._peek()
            if c is None:
                raise Fail(src.pos, eof=True)
            if key == "name" and not have_name:
                if c != '"':
                    raise Fail(src.pos)
                name = yield from self._qstring(NAME_LIMIT, check=bare)
                if not name:
                    raise Fail(src.pos)
                call.name = name
                have_name = True
                self._sync(call)
            elif key in ("arguments", "parameters") and not have_args:
                have_args = True
                if bare:
                    call.accepted = True
                if c == "{":
                    yield from self._json(call.parts.append, call)
                elif c == '"':
                    call.string_args = True
                    yield from self._json(call.parts.append, call, raw_string=True)
                elif c == "n":
                    tmp: list[str] = []
                    yield from self._json(tmp.append)
                    if tmp != ["null"]:
                        raise Fail(src.pos)
                    call.parts.append("{}")
                    self._sync(call)
                else:
                    raise Fail(src.pos)
            else:
                yield from self._json(_discard)
            yield from self._ws()
            c = yield from self._peek()
            if c is None:
                raise Fail(src.pos, eof=True)
            if c != "}" and c != ",":
                raise Fail(src.pos)
            src.pos += 1
            if c == "}":
                break
            first = False
        if not have_name or (bare and not have_args):
            raise Fail(src.pos)
        if call.string_args:
            text = "".join(call.parts)
            if not text.strip() and not call.opened:
                call.parts[:] = ["{}"]
            else:
                try:
                    ok = isinstance(json.loads(text), dict)
                except ValueError:
                    ok = False
                if not ok:
                    raise Fail(src.pos)

    def _g_hermes(self, lit):
        src = self._src
        src.pos += len(lit)
        call = _Call(accepted=True)
        try:
            yield from self._ws()
            c = yield from self._peek()
            if c == "{":
                yield from self._call_object(call, bare=False)
            elif c == "<" and "<function=" in self._handlers:
                yield from self._xml_coder(call)
            else:
                raise Fail(src.pos, eof=c is None)
            self._call_done(call)
        except Fail as f:
            yield from self._failed(call, f, ends=("</tool_call>",))
            return
        yield from self._ws_lit(("</tool_call>",))
        self._cut(DROP)

    def _g_python_tag(self, lit):
        src = self._src
        src.pos += len(lit)
        call = _Call(accepted=True)
        try:
            yield from self._ws()
            c = yield from self._peek()
            if c != "{":
                raise Fail(src.pos, eof=c is None)
            yield from self._call_object(call, bare=False)
            self._call_done(call)
        except Fail as f:
            yield from self._failed(call, f)
            return
        if self.spec.call_separator:
            yield from self._ws_lit((self.spec.call_separator,))
        self._cut(DROP)

    def _g_bare(self, lit):
        call = _Call(accepted=False)
        try:
            yield from self._call_object(call, bare=True)
            self._call_done(call)
        except Fail as f:
            yield from self._bare_failed(call, f, 0)
            return
        if self.spec.call_separator:
            yield from self._ws_lit((self.spec.call_separator,))
        self._cut(DROP)

    def _g_fence(self, lit):
        src = self._src
        src.pos += len(lit)
        call = _Call(accepted=False)
        obj = None
        try:
            yield from self._letters(("", "json"))
            yield from self._ws()
            c = yield from self._peek()
            if c != "{":
                raise Fail(src.pos, eof=c is None)
            obj = self._consumed()
            yield from self._call_object(call, bare=True)
            self._call_done(call)
        except Fail as f:
            if obj is None:
                self._tentative_failed(f)
            else:
                yield from self._bare_failed(call, f, obj)
            return
        yield from self._ws_lit(("```",))
        self._cut(DROP)

    def _g_mistral(self, lit):
        src = self._src
        src.pos += len(lit)
        self._cut(PENDING)
        yield from self._ws()
        c = yield from self._peek()
        if c == "[":  # [TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]
            src.pos += 1
            first = True
            while True:
                yield from self._ws()
                c = yield from self._peek()
                if c == "]" and first:
                    src.pos += 1
                    self._cut(PENDING)
                    return
                call = _Call(accepted=True)
                try:
                    if c != "{":
                        raise Fail(src.pos, eof=c is None)
                    yield from self._call_object(call, bare=False)
                    self._call_done(call)
                except Fail as f:
                    yield from self._failed(call, f)
                    return
                self._cut(DROP)
                yield from self._ws()
                c = yield from self._peek()
                if c == ",":
                    src.pos += 1
                    first = False
                    continue
                if c == "]":
                    src.pos += 1
                    self._cut(DROP)
                return
        call = _Call(accepted=True)
        try:
            if c == "{":  # a single object without the list
                yield from self._call_object(call, bare=False)
            else:  # [TOOL_CALLS]name{json} (v11+), name[ARGS]{json}, name[CALL_ID]id[ARGS]{json}
                call.name = yield from self._bare_name(declared=False)
                c = yield from self._peek()
                if c == "[":
                    got = yield from self._lit(("[ARGS]", "[CALL_ID]"))
                    if got == "[CALL_ID]":
                        yield from self._until(("[ARGS]",), 64)
                yield from self._args_object(call)
            self._call_done(call)
        except Fail as f:
            yield from self._failed(call, f)
            return
        self._cut(DROP)

    def _ds_block(self, lit, v31: bool):
        src = self._src
        explicit = lit == DS_CALLS_BEGIN
        if explicit:
            src.pos += len(lit)
            self._cut(PENDING)
        while True:
            got = yield from self._ws_lit((DS_CALL_BEGIN, DS_CALLS_END))
            if got is None:
                if explicit:
                    yield from self._ws()
                    c = yield from self._peek()
                    if c is not None:  # junk inside the block
                        yield from self._skip((DS_CALLS_END,), (DS_CALLS_BEGIN,))
                    self._cut(PENDING)
                return
            if got == DS_CALLS_END:
                self._cut(PENDING)
                return
            call = _Call(accepted=True)
            try:
                if not v31:
                    yield from self._until((DS_SEP,), 64)  # the call type, "function"
                    name, _ = yield from self._until(("\n",), NAME_LIMIT)
                else:
                    name, _ = yield from self._until((DS_SEP,), NAME_LIMIT)
                name = name.strip()
                if not name:
                    raise Fail(src.pos)
                call.name = name
                yield from self._fence_open()
                yield from self._args_object(call)
                self._call_done(call)
            except Fail as f:
                yield from self._failed(call, f, ends=(DS_CALL_END,),
                                        starts=(DS_CALL_BEGIN, DS_CALLS_END, DS_CALLS_BEGIN))
                if f.eof:
                    return
                continue
            yield from self._ws_lit(("```",))
            yield from self._ws_lit((DS_CALL_END,))
            self._cut(DROP)

    def _g_ds_v3(self, lit):
        return self._ds_block(lit, v31=False)

    def _g_ds_v31(self, lit):
        return self._ds_block(lit, v31=True)

    def _g_qwen_agent(self, lit):
        src = self._src
        src.pos += len(lit)
        call = _Call(accepted=True)
        try:
            yield from self._ws_lit((":",))
            name, _ = yield from self._until(("\n",), NAME_LIMIT)
            name = name.strip()
            if not name:
                raise Fail(src.pos)
            call.name = name
            yield from self._ws()
            yield from self._lit(("✿ARGS✿",))
            yield from self._ws_lit((":",))
            yield from self._args_object(call)
            self._call_done(call)
        except Fail as f:
            yield from self._failed(call, f)
            return
        got = yield from self._ws_lit(("✿RESULT✿", "✿RETURN✿"))
        if got:
            yield from self._ws_lit((":",))
        self._cut(DROP)

    def _g_segment(self, lit):
        self._src.pos += len(lit)
        yield from self._segment()

    def _segment(self):
        """GLM-4 `name\\n{json}` / ChatGLM3 `name\\n```python\\ntool_call(k=v)\\n```` at a segment start."""
        src = self._src
        call = _Call(accepted=False)
        python = self.spec.line_start == "python_call"
        try:
            if self.spec.line_start_ws:
                yield from self._ws()
            name = yield from self._bare_name(declared=True)
            yield from self._lit(("\n",))
            call.name = name
            if python:
                yield from self._ws()
                yield from self._lit(("```",))
                yield from self._letters()
                yield from self._ws()
                yield from self._lit(("tool_call(",))
                call.accepted = True
                sc = _PyCallArgs()
                while True:
                    st, src.pos = sc.scan(src.buf, src.pos, src.final)
                    if st == DONE:
                        break
                    if st == ERR or st == EOF:
                        raise Fail(src.pos, eof=st == EOF)
                    yield
                args = _py_kwargs_to_json("".join(sc.parts))
                if args is None:
                    raise Fail(src.pos)
                call.parts.append(args)
            else:
                yield from self._ws()
                c = yield from self._peek()
                if c != "{":
                    raise Fail(src.pos, eof=c is None)
                call.accepted = True
                yield from self._json(call.parts.append, call)
            self._call_done(call)
        except Fail as f:
            if call.accepted:
                yield from self._failed(call, f)
            else:
                self._tentative_failed(f)
            return
        if python:
            yield from self._ws_lit(("```",))
        self._cut(DROP)

    def _g_xml_function(self, lit):
        call = _Call(accepted=True)
        try:
            yield from self._xml_coder(call)
            self._call_done(call)
        except Fail as f:
            yield from self._failed(call, f, ends=("</tool_call>",))
            return
        yield from self._ws_lit(("</tool_call>",))
        self._cut(DROP)

    def _xml_coder(self, call: _Call):
        """Qwen3-Coder: <function=NAME><parameter=K>V</parameter>...</function>"""
        yield from self._lit(("<function=",))
        name, _ = yield from self._until((">",), NAME_LIMIT)
        name = name.strip()
        if not name:
            raise Fail(self._src.pos)
        call.name = name
        yield from self._xml_params(call, dsml=False)

    def _g_dsml(self, lit):
        """DeepSeek V3.2: <｜DSML｜function_calls><｜DSML｜invoke name="f"><｜DSML｜parameter name="k"
        string="true|false">v</｜DSML｜parameter></｜DSML｜invoke></｜DSML｜function_calls>"""
        src = self._src
        src.pos += len(lit)
        self._cut(PENDING)
        while True:
            got = yield from self._ws_lit((DSML_INVOKE, DSML_CALLS_END))
            if got is None:
                yield from self._ws()
                c = yield from self._peek()
                if c is not None:
                    yield from self._skip((DSML_CALLS_END,), (lit,))
                self._cut(PENDING)
                return
            if got == DSML_CALLS_END:
                self._cut(PENDING)
                return
            call = _Call(accepted=True)
            try:
                attrs, _ = yield from self._until((">",), 512)
                name = dict(_ATTR.findall(attrs)).get("name", "").strip()
                if not name:
                    raise Fail(src.pos)
                call.name = name
                yield from self._xml_params(call, dsml=True)
                self._call_done(call)
            except Fail as f:
                yield from self._failed(call, f, ends=(DSML_INVOKE_END,), starts=(DSML_INVOKE, DSML_CALLS_END))
                if f.eof:
                    return
                continue
            self._cut(DROP)

    def _xml_params(self, call: _Call, dsml: bool):
        if dsml:
            open_lit, end_lit, close_lit = DSML_PARAM, DSML_INVOKE_END, DSML_PARAM_END
            terms = (DSML_PARAM_END,)
        else:
            open_lit, end_lit, close_lit = "<parameter=", "</function>", "</parameter>"
            terms = ("</parameter>", "<parameter=", "</function>")
        props = (self._schemas.get(call.name) or {}).get("properties") or {}
        first = True
        while True:
            got = yield from self._ws_lit((open_lit, end_lit))
            if got is None:
                yield from self._ws()
                c = yield from self._peek()
                raise Fail(self._src.pos, eof=c is None)
            if got == end_lit:
                break
            head, _ = yield from self._until((">",), 512)
            if dsml:
                attrs = dict(_ATTR.findall(head))
                key = attrs.get("name", "").strip()
                string_attr = attrs.get("string")
            else:
                key, string_attr = head.strip(), None
            if not key:
                raise Fail(self._src.pos)
            call.parts.append(("{" if first else ", ") + canonical_json(key) + ": ")
            first = False
            self._sync(call)
            ptype = _schema_type(props, key)
            if string_attr is not None:
                is_string = string_attr.lower() == "true"
            else:
                is_string = ptype is None or _is_string_type(ptype)
            if is_string:
                call.parts.append('"')
                yield from self._xml_value(call, terms, close_lit, strip_nl=not dsml, encode=True)
                call.parts.append('"')
            else:
                raw: list[str] = []
                yield from self._xml_value(raw.append, terms, close_lit, strip_nl=not dsml, encode=False)
                text = "".join(raw)
                if dsml:
                    try:
                        value = json.loads(text)
                        json.dumps(value, allow_nan=False)
                    except ValueError:
                        value = convert_param(text, ptype)
                else:
                    value = convert_param(text, ptype)
                call.parts.append(canonical_json(value))
            self._sync(call)
        call.parts.append("{}" if first else "}")
        self._sync(call)

    def _xml_value(self, sink, terms, close_lit: str, strip_nl: bool, encode: bool):
        """A parameter value up to the first terminator (only `close_lit` is consumed). strip_nl: drop one
        newline right after the opening tag and one right before the terminator (Qwen3-Coder layout)."""
        src = self._src
        call = sink if isinstance(sink, _Call) else None
        emit = call.parts.append if call is not None else sink
        maxterm = max(len(t) for t in terms)
        first = strip_nl
        while True:
            buf, pos = src.buf, src.pos
            if first:
                if pos >= len(buf):
                    if src.final:
                        raise Fail(pos, eof=True)
                    yield
                    continue
                if buf[pos] == "\n":
                    pos += 1
                    src.pos = pos
                first = False
            found = None
            hold = len(buf)
            i = buf.find("<", pos)
            while i != -1:
                for t in terms:
                    if buf.startswith(t, i):
                        found = t
                        break
                if found:
                    break
                if len(buf) - i < maxterm and any(t.startswith(buf[i:]) for t in terms):
                    hold = i
                    break
                i = buf.find("<", i + 1)
            end = i if found else hold
            text = buf[pos:end]
            if found:
                if strip_nl and text.endswith("\n"):
                    text = text[:-1]
            elif strip_nl and text.endswith("\n"):
                text = text[:-1]  # maybe the newline before the closing tag: decide later
                end -= 1
            if text:
                emit(encode_basestring(text)[1:-1] if encode else text)
                if call is not None:
                    self._sync(call)
            if found:
                src.pos = end + (len(found) if found == close_lit else 0)
                return
            src.pos = end
            if src.final:
                raise Fail(src.pos, eof=True)
            yield
