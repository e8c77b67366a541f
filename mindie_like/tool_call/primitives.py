"""The scanner's vocabulary: the call record, the failure signal, and the primitives every grammar is built of.

A primitive is a generator method: it consumes text at the cursor, `yield`s when it needs more (the next feed
resumes it), and raises `Fail` when the text cannot continue what it parses. `_call_object` (the JSON call object
`{"name": ..., "arguments": ...}`) is in call_object.py.
"""
from __future__ import annotations

import json
import logging
import re
import secrets
import string

from .json_stream import DONE, EOF, ERR, JsonScanner

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

CONTENT, DROP, PENDING, REASONING = 0, 1, 2, 3



def make_call_id(style: str = "call") -> str:
    """A new call id: "mistral" 9 alphanumerics, else (also "native" ids the model did not write) call_ + 8."""
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


class Primitives:
    """Mixin of ToolCallStream: the primitives (they use its `_src`, `_sync`, name checks)."""

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

    def _upto(self, terms, limit: int):
        """Text up to the first of `terms` (left at the cursor); at most `limit` characters."""
        text, term = yield from self._until(terms, limit)
        self._src.pos -= len(term)
        return text, term

    def _find(self, rx, limit: int):
        """Move the cursor to the first match of the regex `rx` (a pattern of at most 16 characters) within
        `limit` characters; the text skipped stays consumed."""
        src = self._src
        while True:
            buf, pos = src.buf, src.pos
            m = rx.search(buf, pos, min(len(buf), pos + limit + 16))
            if m is not None and m.start() - pos <= limit and (m.end() < len(buf) or src.final):
                src.pos = m.start()
                return
            if len(buf) - pos >= limit + 16:
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

    def _qstring(self, limit: int, check: bool = False, prefix_of: str = ""):
        """A short JSON string (key or name) at the cursor, decoded; consumed only once complete. check: a
        declared tool's name; prefix_of: fail as soon as the text written so far is not a prefix of it."""
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
            if check or prefix_of:
                partial = buf[pos + 1:]
                if "\\" not in partial and not (prefix_of.startswith(partial) if prefix_of
                                                 else self._name_prefix_ok(partial)):
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
