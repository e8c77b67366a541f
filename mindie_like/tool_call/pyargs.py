"""Python call syntax: `name(k=v, ...)` keyword arguments (ChatGLM3's `tool_call(...)`, the pythonic families'
`[f(a=1), g(b='x')]`). The argument text is delimited while streaming (strings and brackets skipped), then read
with `ast` (literals only: strings, numbers, True/False/None, lists, dicts, tuples)."""
from __future__ import annotations

import ast
import json

from .json_stream import DONE, EOF, ERR, NEED

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


class _JsonNames(ast.NodeTransformer):
    """`true` / `false` / `null` (JSON spellings a model may use inside Python syntax) as constants."""
    _NAMES = {"true": True, "false": False, "null": None}

    def visit_Name(self, node):
        if node.id in self._NAMES:
            return ast.copy_location(ast.Constant(self._NAMES[node.id]), node)
        return node


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
            out[kw.arg] = ast.literal_eval(_JsonNames().visit(kw.value))
        return json.dumps(out, ensure_ascii=False, allow_nan=False)
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
        return None



def py_call_args(s, call):
    """The cursor is just after `(`: read the keyword arguments up to the matching `)` (consumed) into `call`."""
    from .primitives import Fail
    src = s._src
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
