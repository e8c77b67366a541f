"""XML-style parameters (`<parameter=k>v</parameter>`, `<arg_key>k</arg_key><arg_value>v</arg_value>`, DSML,
MiniMax's `<parameter name="k">`), typed from the tool's JSON schema and streamed argument by argument.

A value the schema types as a string only is streamed as it arrives (encoded as a JSON string; markup inside it
is kept verbatim, only the closing tag ends it). Any other value is held until its closing tag and then typed:
numbers, booleans, null, objects and arrays (JSON, else a Python literal); a value that does not fit its type
stays the string the model wrote.
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass

from .json_stream import canonical_json, encode_basestring
from .primitives import DROP, PENDING, Fail, _Call

_ATTR = re.compile(r'([A-Za-z_][\w-]*)\s*=\s*"([^"]*)"')
_STRING_TYPES = ("string", "str", "text", "varchar", "char", "enum")


@dataclass(frozen=True)
class ParamSyntax:
    open: str                # starts a parameter
    key_end: str             # ends its key (or its attributes)
    close: str               # ends its value (consumed)
    end: str                 # ends the parameter list (consumed)
    terms: tuple[str, ...]   # where a value stops (only `close` is consumed)
    value_open: str = ""     # written between the key and the value (GLM's <arg_value>)
    attrs: bool = False      # the key part is attributes: name="k" (and DSML's string="true|false")
    strip_nl: bool = False   # one newline right after the opening tag and one before the closing tag are layout
    untyped: str = "string"  # a value the schema does not type: "string", or "literal" (JSON if it parses)
    json_first: bool = False  # a non-string value is read as JSON before the type's own conversion (DSML)


def param_types(props, key: str) -> list[str]:
    """The JSON types the schema gives property `key` (empty: not said). anyOf / oneOf branches included."""
    spec = props.get(key) if isinstance(props, dict) else None
    out: list[str] = []
    _collect_types(spec, out, 0)
    return out


def _collect_types(spec, out: list, depth: int) -> None:
    if not isinstance(spec, dict) or depth > 8:
        return
    t = spec.get("type")
    for x in (t if isinstance(t, list) else [t] if t is not None else []):
        if isinstance(x, str) and x.lower() not in out:
            out.append(x.lower())
    if t is None:
        if "enum" in spec or "const" in spec:
            vals = spec.get("enum") if "enum" in spec else [spec["const"]]
            for v in vals if isinstance(vals, list) else []:
                name = _json_type_name(v)
                if name not in out:
                    out.append(name)
        elif "properties" in spec and "object" not in out:
            out.append("object")
    for k in ("anyOf", "oneOf"):
        for sub in spec.get(k) or ():
            _collect_types(sub, out, depth + 1)


def _json_type_name(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    return "array" if isinstance(v, list) else "object"


def is_string_type(t) -> bool:
    return t in _STRING_TYPES


def convert_param(raw: str, ptype) -> object:
    """A raw value -> Python value of type `ptype`; the raw string when it is not one."""
    if ptype is None or is_string_type(ptype):
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
    return _literal(s, raw)


def _literal(s: str, raw: str) -> object:
    for loader in (json.loads, ast.literal_eval):
        try:
            v = loader(s)
            json.dumps(v, allow_nan=False)
            return v
        except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
            continue
    return raw


def typed_value(raw: str, types: list[str], untyped: str) -> object:
    if not types:
        if untyped == "literal":
            s = raw.strip()
            try:
                v = json.loads(s)
                json.dumps(v, allow_nan=False)
                return v
            except (ValueError, RecursionError):
                return raw
        return raw
    if "null" in types and raw.strip() == "null":
        return None
    for t in types:
        if t == "null" or is_string_type(t):
            continue
        v = convert_param(raw, t)
        if v is not raw:
            return v
    return raw


def streams_as_string(types: list[str], untyped: str) -> bool:
    """Values streamed as they arrive: typed as strings only (or untyped in a family that keeps them strings)."""
    if not types:
        return untyped == "string"
    return all(is_string_type(t) for t in types)


def xml_params(s, call: _Call, syn: ParamSyntax):
    """The parameters of `call` up to and including `syn.end`, streamed into call.parts as a JSON object."""
    props = (s._schemas.get(call.name) or {}).get("properties") or {}
    first = True
    while True:
        got = yield from s._ws_lit((syn.open, syn.end))
        if got is None:
            yield from s._ws()
            c = yield from s._peek()
            raise Fail(s._src.pos, eof=c is None)
        if got == syn.end:
            break
        head, _ = yield from s._until((syn.key_end,), 512)
        string_attr = None
        if syn.attrs:
            attrs = dict(_ATTR.findall(head))
            key = attrs.get("name", "").strip()
            string_attr = attrs.get("string")
        else:
            key = head.strip()
        if not key:
            raise Fail(s._src.pos)
        if syn.value_open:
            yield from s._ws()
            yield from s._lit((syn.value_open,))
        call.parts.append(("{" if first else ", ") + canonical_json(key) + ": ")
        first = False
        s._sync(call)
        types = param_types(props, key)
        if string_attr is not None:
            as_string = string_attr.lower() == "true"
        else:
            as_string = streams_as_string(types, syn.untyped)
        if as_string:
            call.parts.append('"')
            yield from xml_value(s, call, syn, encode=True)
            call.parts.append('"')
        else:
            raw: list[str] = []
            yield from xml_value(s, raw.append, syn, encode=False)
            text = "".join(raw)
            value = None
            if syn.json_first:
                try:
                    value = json.loads(text)
                    json.dumps(value, allow_nan=False)
                    call.parts.append(canonical_json(value))
                    s._sync(call)
                    continue
                except ValueError:
                    pass
            value = typed_value(text, types, syn.untyped)
            call.parts.append(canonical_json(value))
        s._sync(call)
    call.parts.append("{}" if first else "}")
    s._sync(call)


def xml_value(s, sink, syn: ParamSyntax, encode: bool):
    """A value up to the first of `syn.terms` (only `syn.close` is consumed). With `strip_nl`, one newline right
    after the opening tag and one right before the terminator are dropped."""
    src = s._src
    terms, close_lit, strip_nl = syn.terms, syn.close, syn.strip_nl
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
                s._sync(call)
        if found:
            src.pos = end + (len(found) if found == close_lit else 0)
            return
        src.pos = end
        if src.final:
            raise Fail(src.pos, eof=True)
        yield


def invoke_block(s, lit, *, invoke, end, body, ends, starts, rewind=False):
    """A block of calls `lit (invoke ...)* end` (MiniMax-M2, Seed-OSS, DeepSeek's DSML): each call opens with
    `invoke` and is parsed by `body(s, call)` (rewind: `body` reads `invoke` itself); text inside the block that
    is not a call is skipped to `end` or the next `lit`; a failed call is attributed (`ends` / `starts` bound
    it) and parsing goes on at the next call."""
    src = s._src
    src.pos += len(lit)
    s._cut(PENDING)
    while True:
        got = yield from s._ws_lit((invoke, end))
        if got is None:
            yield from s._ws()
            c = yield from s._peek()
            if c is not None:
                yield from s._skip((end,), (lit,))
            s._cut(PENDING)
            return
        if got == end:
            s._cut(PENDING)
            return
        if rewind:
            src.pos -= len(got)
        call = _Call(accepted=True)
        try:
            yield from body(s, call)
            s._call_done(call)
        except Fail as f:
            yield from s._failed(call, f, ends=ends, starts=starts)
            if f.eof:
                return
            continue
        s._cut(DROP)


def named_invoke(syntax: "ParamSyntax"):
    """The body of `<invoke name="f">` + parameters in `syntax` (the cursor is past `<invoke`)."""
    def body(s, call):
        attrs, _ = yield from s._until((">",), 512)
        name = dict(_ATTR.findall(attrs)).get("name", "").strip()
        if not name:
            raise Fail(s._src.pos)
        call.name = name
        yield from xml_params(s, call, syntax)
    return body
