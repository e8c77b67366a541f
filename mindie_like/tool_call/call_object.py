"""The JSON call object `{"name": ..., "arguments"|"parameters": ...}` that several families write (Hermes,
Llama 3, Mistral, lenient recovery), with arguments as an object, `null`, or a JSON string."""
from __future__ import annotations

import json

from .json_stream import encode_basestring
from .primitives import NAME_LIMIT, Fail, _Call, _discard


class _StringArgs:
    """Arguments written as a JSON string. A string that holds an object streams its decoded text (the object
    itself); any other string is the value: sent as its JSON encoding, `json.dumps(string)`, since OpenAI's
    `arguments` must be JSON. Decided at the string's first non-blank character."""

    __slots__ = ("call", "mode", "lead")

    def __init__(self, call: _Call):
        self.call = call
        self.mode = ""      # "" undecided, "o" object text, "s" a plain string
        self.lead = ""

    def __call__(self, chunk: str) -> None:
        if not self.mode:
            self.lead += chunk
            body = self.lead.lstrip()
            if not body:
                return
            if body[0] == "{":
                self.mode, chunk = "o", body
            else:
                self.mode, chunk = "s", self.lead
                self.call.parts.append('"')
            self.lead = ""
        self.call.parts.append(chunk if self.mode == "o" else encode_basestring(chunk)[1:-1])

    def end(self) -> bool:
        """The string ended: False when it looked like an object but is not one (the call is malformed)."""
        parts = self.call.parts
        if not self.mode:                     # "" or blank: no arguments
            parts.append("{}")
            return True
        if self.mode == "s":
            parts.append('"')
            return True
        try:
            return isinstance(json.loads("".join(parts)), dict)
        except ValueError:
            return False


class CallObject:
    """Mixin of ToolCallStream."""

    def _marked_call_object(self, c):
        """One marked call object at the cursor, whose next character is `c`; False when it failed (the failure
        is already attributed, and the caller's grammar ends there)."""
        call = _Call(accepted=True)
        try:
            if c != "{":
                raise Fail(self._src.pos, eof=c is None)
            yield from self._call_object(call, bare=False)
            self._call_done(call)
        except Fail as f:
            yield from self._failed(call, f)
            return False
        return True

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
            # a marker-less candidate's first key must be "name": it is ruled out at its first other letter
            key = yield from self._qstring(16 if bare and first else 64, prefix_of="name" if bare and first else "")
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
                    sink = _StringArgs(call)
                    yield from self._json(sink, call, raw_string=True)
                    if not sink.end():
                        raise Fail(src.pos)
                    self._sync(call)
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
