"""Incremental JSON scanner that validates as it goes and emits the canonical serialization.

The scanner is resumable: `scan(buf, pos, final)` consumes what it can from `buf[pos:]` and returns
`(status, pos)`. It keeps no positions between calls (only its grammar state), so the caller may drop the
consumed prefix of its buffer between calls. Strings are streamed chunk by chunk; numbers and literals are short
tokens and are only decided once the character after them is known (so every decision, and every error
position, depends on the text alone, never on how it was split into deltas).

Canonical form (what `arguments` strings are made of): the JSON text with whitespace normalized to `", "` and
`": "`, strings decoded and re-encoded with `ensure_ascii=False` (only `"`, `\\` and control characters are
escaped), numbers as Python writes them (`int`, or `float.__repr__`), literals as is. For every JSON value
without duplicate object keys this equals `json.dumps(json.loads(text), ensure_ascii=False)`; duplicate keys are
kept in order rather than merged (a streamer cannot take back what it sent).
"""
from __future__ import annotations

import json
import math
import re
from json.encoder import encode_basestring  # the C implementation when available

DONE, NEED, ERR, EOF = 0, 1, 2, 3

_WS = re.compile(r"[ \t\n\r]*")
_STR_BODY = re.compile(r'(?:[^"\\]+|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*')
_STR_BODY_STRICT = re.compile(r'(?:[^"\\\x00-\x1f]+|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*')
_ESC_PREFIX = re.compile(r"\\(?:u[0-9a-fA-F]{0,3})?")
_HI_SURR = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}")
_CTRL = re.compile(r"[\x00-\x1f]")
_NUM_RUN = re.compile(r"[-+0-9.eE]*")
_NUM = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_ALPHA_RUN = re.compile(r"[A-Za-z]*")
_LITERALS = ("true", "false", "null")

# grammar states
_V, _K0, _K, _C, _A0, _N, _S, _END = range(8)


def encode_chunk(body: str) -> str:
    """Raw JSON string body (complete escapes) -> canonical encoded body."""
    if "\\" not in body and _CTRL.search(body) is None:
        return body
    return encode_basestring(json.loads('"' + body + '"', strict=False))[1:-1]


def decode_chunk(body: str) -> str:
    """Raw JSON string body (complete escapes) -> decoded text."""
    if "\\" not in body:
        return body
    return json.loads('"' + body + '"', strict=False)


def canonical_number(tok: str) -> str | None:
    """Canonical text of a JSON number token, None when it is not one."""
    if _NUM.fullmatch(tok) is None:
        return None
    try:
        if "." in tok or "e" in tok or "E" in tok:
            f = float(tok)
            return repr(f) if math.isfinite(f) else tok
        return str(int(tok))
    except ValueError:  # e.g. more digits than int() accepts
        return None


def canonical_json(value) -> str:
    """Canonical text of a Python value (what the scanner would emit for its JSON)."""
    return json.dumps(value, ensure_ascii=False)


def _real_escape(buf: str, start: int, at: int) -> bool:
    """True when the backslash at `at` starts an escape (an even run of backslashes precedes it since `start`)."""
    k = at - 1
    while k >= start and buf[k] == "\\":
        k -= 1
    return (at - 1 - k) % 2 == 0


class JsonScanner:
    """Scans one JSON value. `emit(str)` receives canonical fragments in order.

    raw_string: when the top-level value is a string, emit its decoded text (no quotes) instead; used for
    arguments that a model already wrote as a JSON-encoded string.
    strict: a raw control character (a newline) inside a string is an error, as RFC 8259 says. Off for
    arguments (models write raw newlines in strings); on where we only need to know where a value ends.
    """

    __slots__ = ("emit", "stack", "state", "is_key", "max_depth", "raw_string", "str_body")

    def __init__(self, emit, *, max_depth: int = 512, raw_string: bool = False, strict: bool = False):
        self.emit = emit
        self.stack: list[bool] = []  # True: object, False: array
        self.state = _V
        self.is_key = False
        self.max_depth = max_depth
        self.raw_string = raw_string
        self.str_body = _STR_BODY_STRICT if strict else _STR_BODY

    @property
    def done(self) -> bool:
        return self.state == _END

    def scan(self, buf: str, pos: int, final: bool) -> tuple[int, int]:
        n = len(buf)
        emit = self.emit
        stack = self.stack
        state = self.state
        while True:
            if state == _S:
                raw = self.raw_string and not stack and not self.is_key
                conv = decode_chunk if raw else encode_chunk
                j = self.str_body.match(buf, pos).end()
                if j < n and buf[j] == '"':
                    if j > pos:
                        emit(conv(buf[pos:j]))
                    pos = j + 1
                    if self.is_key:
                        emit('"')
                        state = _C
                        continue
                    if not raw:
                        emit('"')
                    if stack:
                        state = _N
                        continue
                    self.state = _END
                    return DONE, pos
                # buffer end or a backslash that does not start a complete escape
                incomplete = j == n or (n - j < 6 and _ESC_PREFIX.fullmatch(buf, j) is not None)
                if incomplete and not final:
                    # keep a high surrogate escape until its low half is known
                    if j - pos >= 6 and _HI_SURR.match(buf, j - 6) and _real_escape(buf, pos, j - 6):
                        j -= 6
                    if j > pos:
                        emit(conv(buf[pos:j]))
                    self.state = state
                    return NEED, j
                self.state = state
                return (EOF if incomplete else ERR), j
            pos = _WS.match(buf, pos).end()
            if pos >= n:
                self.state = state
                return (EOF if final else NEED), pos
            c = buf[pos]
            if state == _V or state == _A0:
                if c == '"':
                    if not (self.raw_string and not stack):
                        emit('"')
                    self.is_key = False
                    state = _S
                    pos += 1
                    continue
                if c == "{":
                    if len(stack) >= self.max_depth:
                        self.state = state
                        return ERR, pos
                    stack.append(True)
                    emit("{")
                    state = _K0
                    pos += 1
                    continue
                if c == "[":
                    if len(stack) >= self.max_depth:
                        self.state = state
                        return ERR, pos
                    stack.append(False)
                    emit("[")
                    state = _A0
                    pos += 1
                    continue
                if c == "]" and state == _A0:
                    stack.pop()
                    emit("]")
                    pos += 1
                elif c == "-" or "0" <= c <= "9":
                    j = _NUM_RUN.match(buf, pos).end()
                    if j >= n and not final:
                        self.state = state
                        return NEED, pos
                    canon = canonical_number(buf[pos:j])
                    if canon is None:
                        self.state = state
                        return ERR, pos
                    emit(canon)
                    pos = j
                elif "a" <= c <= "z":
                    j = _ALPHA_RUN.match(buf, pos).end()
                    tok = buf[pos:j]
                    if j >= n and not final and any(lit.startswith(tok) for lit in _LITERALS):
                        self.state = state
                        return NEED, pos
                    if tok not in _LITERALS:
                        self.state = state
                        return ERR, pos
                    emit(tok)
                    pos = j
                else:
                    self.state = state
                    return ERR, pos
                # a value (or an empty array) just ended
                if stack:
                    state = _N
                    continue
                self.state = _END
                return DONE, pos
            if state == _K0 or state == _K:
                if c == '"':
                    emit('"')
                    self.is_key = True
                    state = _S
                    pos += 1
                    continue
                if c == "}" and state == _K0:
                    stack.pop()
                    emit("}")
                    pos += 1
                    if stack:
                        state = _N
                        continue
                    self.state = _END
                    return DONE, pos
                self.state = state
                return ERR, pos
            if state == _C:
                if c != ":":
                    self.state = state
                    return ERR, pos
                emit(": ")
                state = _V
                pos += 1
                continue
            if state == _N:
                top = stack[-1]
                if c == ",":
                    emit(", ")
                    state = _K if top else _V
                    pos += 1
                    continue
                if (c == "}" and top) or (c == "]" and not top):
                    stack.pop()
                    emit(c)
                    pos += 1
                    if stack:
                        continue
                    self.state = _END
                    return DONE, pos
                self.state = state
                return ERR, pos
            # _END: nothing more to read
            self.state = state
            return DONE, pos
