"""The one mechanism that turns a tool-call family's CallFormat (mindie_like.tool_call: each family carries its
own) into an llguidance Lark grammar.

Markers (`<tool_call>`, `[TOOL_CALLS]`, DeepSeek's `<｜tool▁sep｜>`, ...) are written as token references
(`<[id]>`) when the tokenizer has them as a single added token, else as literal text: llguidance only matches an
added token through such a reference, never through its spelling.

Arguments are either one JSON value constrained by the tool's schema (`%json {...}`), or, for the formats that
write arguments parameter by parameter (qwen3_coder's `<parameter=K>`, GLM's `<arg_key>`, DSML, ...), one rule
per declared property in the family's ParamStyle: string properties as raw text up to the closing tag, others as
JSON.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Optional

from ..tool_call.call_format import CallFormat, ParamStyle, json_call
from ..tool_call.families import FAMILIES
from .schema import GuidedDecodingError, schema_types, with_format

FamilyFormat = CallFormat   # the name this type had when the formats were a table here

FAMILY_FORMATS: dict[str, CallFormat] = {f.family: f.guided for f in FAMILIES}
FAMILY_ALIASES: dict[str, str] = {a: f.family for f in FAMILIES for a in f.aliases if a != f.family}
FAMILY_VARIANTS: dict[str, list[tuple[str, CallFormat]]] = {f.family: list(f.guided_variants) for f in FAMILIES
                                                           if f.guided_variants}
FAMILY_REASONING: dict[str, tuple[str, str]] = {
    f.family: tuple(f.guided.reasoning or f.reasoning or ("<think>", "</think>")) for f in FAMILIES}
# families whose reasoning is a message of its own (optional, opened explicitly)
EXPLICIT_REASONING = frozenset(f.family for f in FAMILIES if f.guided.reasoning)
# End-of-turn tokens of every family; those present in a tokenizer (as one token) join its EOS.
END_OF_TURN: tuple[str, ...] = tuple(dict.fromkeys(t for f in FAMILIES for t in f.end_of_turn))

# Raw string values longer than this are left unbounded in the regex (a `.{0,100000}` automaton is huge).
_MAX_REGEX_REPEAT = 4096


def lark_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


_RE_META = set("\\.+*?()|[]{}^$#&-~/")


def regex_literal(text: str) -> str:
    """`text` as a Rust-regex literal usable inside Lark's /.../."""
    out = []
    for ch in text:
        if ch in _RE_META:
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append("\\x{%x}" % ord(ch))
        else:
            out.append(ch)
    return "".join(out)


def check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name:
        raise GuidedDecodingError(f"{where}: a function name must be a non-empty string")
    if any(ord(c) < 0x20 or c in "\"\\<>" for c in name):
        raise GuidedDecodingError(f"{where}: function name {json.dumps(name)} contains characters a tool call "
                                  "cannot carry")
    return name


class GrammarWriter:
    """Collects Lark rules.

    `split(text)` cuts a literal into plain strings and token ids: the special tokens of the tokenizer that occur
    in it (a whole marker like `<tool_call>`, or a special token inside a longer literal). The model's tokenizer
    encodes such text with the special token, so the grammar must ask for the token, never for its spelling.
    `resolve(schema)` -> the schema to embed (identity, or a fallback for schemas llguidance cannot compile).
    """

    def __init__(self, split: Callable[[str], list], resolve: Callable[[Any], Any],
                 separators: tuple[str, str]):
        self.split = split
        self.resolve = resolve
        self.separators = separators
        self.rules: list[str] = []
        self._n = 0

    def fresh(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def rule(self, name: str, body: str) -> str:
        self.rules.append(f"{name}: {body}")
        return name

    def json_rule(self, stem: str, schema: Any) -> str:
        body = json.dumps(with_format(self.resolve(schema), self.separators), ensure_ascii=False,
                          separators=(",", ":"))
        return self.rule(self.fresh(stem), f"%json {body}")

    def text(self) -> str:
        return "\n".join(self.rules) + "\n"

    @staticmethod
    def _lark_pieces(pieces: list) -> str:
        return " ".join(f"<[{x}]>" if isinstance(x, int) else lark_str(x) for x in pieces if x != "")

    def lit(self, text: str) -> str:
        """Lark for literal text (special tokens in it as token references); "" for no text."""
        return self._lark_pieces(self.split(text)) if text else ""

    # ---- template rendering ----
    def render(self, parts: tuple, tool: Optional[dict] = None, fmt: Optional[CallFormat] = None) -> str:
        out = []
        for p in parts:
            r = self.render_part(p, tool, fmt)
            if r:
                out.append(r)
        return " ".join(out)

    def render_part(self, p: tuple, tool: Optional[dict], fmt: Optional[CallFormat]) -> str:
        kind = p[0]
        if kind in ("m", "s"):
            return self.lit(p[1])
        if kind == "rx":
            return f"/{p[1]}/"
        if kind == "opt":
            inner = self.render_part(p[1], tool, fmt)
            return f"({inner})?" if inner else ""
        if kind == "ks":
            return "KEY_SEP"
        if kind == "is":
            return "ITEM_SEP"
        if kind == "name":
            return self.lit(tool["name"])
        if kind == "qname":
            return self.lit(json.dumps(tool["name"], ensure_ascii=False))
        if kind == "args":
            return self.json_rule("args", tool["parameters"])
        if kind == "params":
            return self.params(tool, fmt.params)
        raise ValueError(f"unknown template part {p!r}")

    # ---- parameter-by-parameter formats ----
    def params(self, tool: dict, style: ParamStyle) -> str:
        schema = tool["parameters"]
        props = schema.get("properties") if isinstance(schema, dict) else None
        required = set(schema.get("required") or ()) if isinstance(schema, dict) else set()
        defs = {k: schema[k] for k in ("$defs", "definitions") if isinstance(schema, dict) and k in schema}
        items = []
        if isinstance(props, dict) and props:
            for key, sub in props.items():
                check_name(key, f"tool {tool['name']} parameter")
                r = self.param(style, key, sub, defs)
                items.append(r if key in required else f"{r}?")
        else:   # free-form object: any keys, values as text (JSON where the style needs it)
            open_, close = self._param_tags(style, None, is_string=not style.json_strings)
            val = self.raw_value({}, close) if not style.json_strings else \
                f"{self.json_rule('pjson', {})} {self.lit(close)}"
            items.append(f"({open_} {val})*")
        return self.rule(self.fresh("params"), " ".join(items)) if items else '""'

    def _param_tags(self, style: ParamStyle, key: Optional[str], is_string: bool) -> tuple[str, str]:
        """Lark for the opening of a parameter, and the text that closes its value."""
        key_lark = self.lit(key) if key is not None else "/[A-Za-z0-9_.\\-]{1,64}/"
        before, after = style.open.replace("{string}", "true" if is_string else "false").split("{key}", 1)
        parts = [x for x in (self.lit(before), key_lark, self.lit(after)) if x]
        return " ".join(parts), style.close

    def param(self, style: ParamStyle, key: str, sub: Any, defs: dict) -> str:
        types = schema_types(sub)
        # raw text where the parser reads a string: a string type (with null, "null" reads as null)
        is_string = "string" in types and types <= {"string", "null"} and not style.json_strings
        open_, close = self._param_tags(style, key, is_string)
        if is_string:
            val = self.raw_value(sub, close)
        else:
            full = dict(sub) if isinstance(sub, dict) else ({} if sub else {"not": {}})
            for k, v in defs.items():
                full.setdefault(k, v)
            j = self.json_rule("pjson", full)
            val = f"{j} {self.lit(close)}" if close else j
        return self.rule(self.fresh("param"), f"{open_} {val}")

    def raw_value(self, sub: Any, close: str) -> str:
        """A string parameter written raw (no quotes), followed by the text `close` that ends it."""
        sub = sub if isinstance(sub, dict) else {}
        choices = [sub["const"]] if "const" in sub else sub.get("enum")
        if isinstance(choices, list) and choices and all(isinstance(c, str) for c in choices):
            alts = " | ".join(self.lit(c) for c in choices if c != "") or '""'
            if "" in choices:
                alts = f"({alts})?"
            return f"({alts}) {self.lit(close)}"
        lo = int(sub.get("minLength", 0))
        hi = sub.get("maxLength")
        if hi is not None and int(hi) <= _MAX_REGEX_REPEAT:
            body = f"(?s:.{{{lo},{int(hi)}}})"
        else:
            body = f"(?s:.{{{lo},}})" if lo else "(?s:.*)"
        pieces = self.split(close)
        k = next((i for i, x in enumerate(pieces) if isinstance(x, int)), None)
        if k is not None:
            # The close holds a special token: the raw text (a regex never spans one) ends right before it.
            term = self.fresh("RAW").upper()
            self.rules.append(f"{term}: /{body}{regex_literal(''.join(pieces[:k]))}/")
            return f"{term} {self._lark_pieces(pieces[k:])}"
        name = self.fresh("raw")   # lazy: the value ends at the first occurrence of the close text
        self.rules.append(f"{name}[lazy]: /{body}{regex_literal(close)}/")
        return name


def arguments_json_call_rule(w: GrammarWriter, tool: dict) -> str:
    """`{"name": "<n>", "arguments": <args>}` for the families whose own format is not enforced."""
    return w.rule(w.fresh("call"), w.render(json_call("arguments"), tool))


def think_prefix(w: GrammarWriter, tags: tuple[str, str] = ("<think>", "</think>"), explicit: bool = False) -> str:
    """The reasoning block: an optional open tag (`<think>`, or the family's own; the template may have opened it),
    free reasoning text, the close tag, up to two newlines. explicit: the whole block is optional and starts with
    its open tag (a format whose reasoning is a message of its own, gpt-oss's analysis channel)."""
    open_t, close_t = tags
    open_p, close_p = w.split(open_t), w.split(close_t)
    if any(isinstance(x, int) for x in close_p):
        w.rules.append("THINK_TEXT: /(?s:.*)/")
        if explicit:
            opt = f"{w.lit(open_t)} "
        else:
            opt = f"({w.lit(open_t)})? " if any(isinstance(x, int) for x in open_p) else ""
        body = f"{opt}THINK_TEXT {w.lit(close_t)}"
    else:
        name = w.fresh("think_text")
        w.rules.append(f"{name}[lazy]: /(?s:.*){regex_literal(close_t)}/")
        body = f"{w.lit(open_t)} {name}" if explicit else name
    if explicit:
        return w.rule("reasoning", f"({body} /\\n{{0,2}}/)?")
    return w.rule("reasoning", f"{body} /\\n{{0,2}}/")


def free_text_rule(w: GrammarWriter, trigger: str) -> str:
    """A terminal for free text that cannot start a call: any text without `trigger` (text never holds a
    special token, so a trigger that is one needs no exclusion)."""
    name = w.fresh("FREE").upper()
    pieces = w.split(trigger)
    if pieces and isinstance(pieces[0], int):
        w.rules.append(f"{name}: /(?s:.*)/")
    else:
        w.rules.append(f"{name}: /(?s:.*)/ & ~/(?s:.*){regex_literal(trigger)}(?s:.*)/")
    return name
