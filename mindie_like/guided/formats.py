"""The per-family tool-call formats and the one mechanism that turns them into llguidance Lark grammars.

Every family is a row of FAMILY_FORMATS: a prefix written once before the calls, a per-call template (markers,
literal text, the tool's name, its arguments), a separator between calls, a suffix after them, and whether the
format can hold several calls at all. Markers (`<tool_call>`, `[TOOL_CALLS]`, DeepSeek's `<｜tool▁sep｜>`, ...)
are written as token references (`<[id]>`) when the tokenizer has them as a single added token, else as literal
text: llguidance only matches an added token through such a reference, never through its spelling.

Arguments are either one JSON value constrained by the tool's schema (`%json {...}`), or, for the formats that
write arguments parameter by parameter (qwen3_coder's `<parameter=K>`, DeepSeek-V3.2's DSML), one rule per
declared property: string properties as raw text up to the closing tag, others as JSON.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .schema import GuidedDecodingError, schema_types, with_format

# ---- template parts -------------------------------------------------------------------------------------------
# ("m", text)   a marker: the special token when the tokenizer has it as one added token, else the text
# ("s", text)   literal text
# ("opt", part) the part, optionally
# ("name",)     the tool name, raw;  ("qname",) the tool name as a JSON string
# ("args",)     the arguments, one JSON value;  ("params",) the arguments parameter by parameter
# ("ks",) / ("is",)  the JSON key / item separators


def M(text: str):
    return ("m", text)


def S(text: str):
    return ("s", text)


def OPT(part):
    return ("opt", part)


NAME, QNAME, ARGS, PARAMS, KS, IS = ("name",), ("qname",), ("args",), ("params",), ("ks",), ("is",)


def json_call(key: str = "arguments") -> tuple:
    """`{"name": "<n>", "<key>": <args>}`."""
    return (S('{"name"'), KS, QNAME, IS, S(json.dumps(key)), KS, ARGS, S("}"))


@dataclass(frozen=True)
class FamilyFormat:
    family: str
    call: tuple = ()
    prefix: tuple = ()
    sep: tuple = ()
    suffix: tuple = ()
    multi: bool = True                 # the format can carry several calls in one answer
    params_style: Optional[str] = None  # "qwen3_coder" | "dsml": PARAMS is written parameter by parameter
    expressible: bool = True           # False: only the arguments JSON is constrained (output_kind arguments_json)
    # Prefix used instead of `prefix` when the calls are in a union with a JSON reply (tool_choice auto +
    # response_format): llguidance decides between a Lark literal and a %json at their first shared byte, so a
    # format whose calls start with `{` must then start with a marker (the bare-JSON call stays possible as a
    # JSON reply, which the family processor reports as a call).
    json_union_prefix: Optional[tuple] = None


_DS_CALLS_BEGIN, _DS_CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
_DS_CALL_BEGIN, _DS_CALL_END, _DS_SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
_DSML = "｜DSML｜"

_HERMES = dict(call=(M("<tool_call>"), S("\n"), *json_call("arguments"), S("\n"), M("</tool_call>")),
               sep=(OPT(S("\n")),))

FAMILY_FORMATS: dict[str, FamilyFormat] = {f.family: f for f in [
    FamilyFormat("qwen2_5", **_HERMES),
    FamilyFormat("qwen3", **_HERMES),
    FamilyFormat("qwen3_coder",
                 call=(M("<tool_call>"), S("\n<function="), NAME, S(">\n"), PARAMS, S("</function>\n"),
                       M("</tool_call>")),
                 sep=(OPT(S("\n")),), params_style="qwen3_coder"),
    FamilyFormat("qwen1_5_or_2", call=(S("✿FUNCTION✿: "), NAME, S("\n✿ARGS✿: "), ARGS), sep=(S("\n"),)),
    FamilyFormat("llama3", prefix=(OPT(M("<|python_tag|>")),), call=json_call("parameters"), sep=(S("; "),),
                 json_union_prefix=(M("<|python_tag|>"),)),
    FamilyFormat("mistral", prefix=(M("[TOOL_CALLS]"), OPT(S(" ")), S("[")), call=json_call("arguments"),
                 sep=(IS,), suffix=(S("]"),)),
    FamilyFormat("deepseek_v3", prefix=(M(_DS_CALLS_BEGIN),),
                 call=(M(_DS_CALL_BEGIN), S("function"), M(_DS_SEP), NAME, S("\n```json\n"), ARGS, S("\n```"),
                       M(_DS_CALL_END)),
                 sep=(OPT(S("\n")),), suffix=(M(_DS_CALLS_END),)),
    FamilyFormat("deepseek_v31", prefix=(M(_DS_CALLS_BEGIN),),
                 call=(M(_DS_CALL_BEGIN), NAME, M(_DS_SEP), ARGS, M(_DS_CALL_END)),
                 suffix=(M(_DS_CALLS_END),)),
    FamilyFormat("deepseek_v32", prefix=(M(f"<{_DSML}function_calls>"), S("\n")),
                 call=(M(f"<{_DSML}invoke"), S(' name="'), NAME, S('">\n'), PARAMS, M(f"</{_DSML}invoke>")),
                 sep=(S("\n"),), suffix=(S("\n"), M(f"</{_DSML}function_calls>")), params_style="dsml"),
    FamilyFormat("glm4", call=(NAME, S("\n"), ARGS), multi=False),
    FamilyFormat("chatglm3", expressible=False),
    FamilyFormat("chatglm2", expressible=False),
    FamilyFormat("passthrough", expressible=False),
]}

# Variants chosen by the tokenizer: (a special token whose presence selects it, the format). Mistral's v11+
# tokenizers (Magistral, Devstral, Mistral Small 3.2) have [ARGS] and write `[TOOL_CALLS]name[ARGS]{json}` per call;
# older ones the JSON array after [TOOL_CALLS].
FAMILY_VARIANTS: dict[str, list[tuple[str, FamilyFormat]]] = {
    "mistral": [("[ARGS]", FamilyFormat("mistral", call=(M("[TOOL_CALLS]"), NAME, M("[ARGS]"), ARGS)))],
}

FAMILY_ALIASES = {
    "hermes": "qwen3", "qwen3_moe": "qwen3", "qwen25": "qwen2_5", "qwen_2_5": "qwen2_5",
    "qwen1_5": "qwen1_5_or_2", "qwen_1_5": "qwen1_5_or_2", "qwen2": "qwen1_5_or_2", "qwen_2": "qwen1_5_or_2",
    "qwen_1_5_or_2": "qwen1_5_or_2", "llama": "llama3", "llama3_1": "llama3",
    "deepseek_v2": "deepseek_v3", "deepseekv2": "deepseek_v3", "deepseekv3": "deepseek_v3",
    "deepseekv31": "deepseek_v31", "deepseekv32": "deepseek_v32",
    "chatglm4_9b": "glm4", "chatglm_v4_9b": "glm4", "glm_4": "glm4", "glm_4_9b": "glm4",
    "chatglm3_6b": "chatglm3", "chatglm_v3_6b": "chatglm3", "chatglm_v3": "chatglm3",
    "chatglm2_6b": "chatglm2", "chatglm_v2_6b": "chatglm2", "chatglm_v2": "chatglm2",
}

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
    def render(self, parts: tuple, tool: Optional[dict] = None, fmt: Optional[FamilyFormat] = None) -> str:
        out = []
        for p in parts:
            r = self.render_part(p, tool, fmt)
            if r:
                out.append(r)
        return " ".join(out)

    def render_part(self, p: tuple, tool: Optional[dict], fmt: Optional[FamilyFormat]) -> str:
        kind = p[0]
        if kind in ("m", "s"):
            return self.lit(p[1])
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
            return self.params(tool, fmt.params_style)
        raise ValueError(f"unknown template part {p!r}")

    # ---- parameter-by-parameter formats ----
    def params(self, tool: dict, style: str) -> str:
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
        else:   # free-form object: any keys, values as text
            open_, close = self._param_tags(style, None, is_string=True)
            val = self.raw_value({}, close)
            items.append(f"({open_} {val})*")
        return self.rule(self.fresh("params"), " ".join(items))

    def _param_tags(self, style: str, key: Optional[str], is_string: bool) -> tuple[str, str]:
        """Lark for the opening of a parameter, and the text that closes its value."""
        key_lark = self.lit(key) if key is not None else "/[A-Za-z0-9_.\\-]{1,64}/"
        if style == "qwen3_coder":
            before, after, close = "<parameter=", ">\n", "\n</parameter>\n"
        elif style == "dsml":
            flag = "true" if is_string else "false"
            before, after, close = f'<{_DSML}parameter name="', f'" string="{flag}">', f"</{_DSML}parameter>\n"
        else:
            raise ValueError(style)
        return f"{self.lit(before)} {key_lark} {self.lit(after)}", close

    def param(self, style: str, key: str, sub: Any, defs: dict) -> str:
        types = schema_types(sub)
        is_string = types == {"string"}
        open_, close = self._param_tags(style, key, is_string)
        if is_string:
            val = self.raw_value(sub, close)
        else:
            full = dict(sub) if isinstance(sub, dict) else ({} if sub else {"not": {}})
            for k, v in defs.items():
                full.setdefault(k, v)
            j = self.json_rule("pjson", full)
            val = f"{j} {self.lit(close)}"
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


def think_prefix(w: GrammarWriter) -> str:
    """An optional `<think>`, free reasoning text, `</think>`, up to two newlines."""
    open_p, close_p = w.split("<think>"), w.split("</think>")
    if any(isinstance(x, int) for x in close_p):
        w.rules.append("THINK_TEXT: /(?s:.*)/")
        opt = f"({w.lit('<think>')})? " if any(isinstance(x, int) for x in open_p) else ""
        body = f"{opt}THINK_TEXT {w.lit('</think>')}"
    else:
        name = w.fresh("think_text")
        w.rules.append(f"{name}[lazy]: /(?s:.*){regex_literal('</think>')}/")
        body = name
    return w.rule("reasoning", f"{body} /\\n{{0,2}}/")
