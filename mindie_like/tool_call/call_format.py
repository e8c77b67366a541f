"""How a family's calls are written, as data the grammar writer (mindie_like.guided) renders for `required`,
a named `tool_choice` and `strict` tools.

A CallFormat is a prefix written once before the calls, a per-call template, a separator between calls and a
suffix after them. Template parts:
  M(text)    a marker: the special token when the tokenizer has it as one added token, else the text
  S(text)    literal text;  OPT(part) the part, optionally
  NAME       the tool's name, raw;  QNAME the name as a JSON string
  ARGS       the arguments, one JSON value constrained by the tool's schema
  PARAMS     the arguments parameter by parameter, spelled by the format's ParamStyle
  KS / IS    the JSON key / item separators
  RX(regex)  text matching a regular expression (Kimi's call index)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional


def M(text: str):
    return ("m", text)


def S(text: str):
    return ("s", text)


def OPT(part):
    return ("opt", part)


def RX(pattern: str):
    return ("rx", pattern)


NAME, QNAME, ARGS, PARAMS, KS, IS = ("name",), ("qname",), ("args",), ("params",), ("ks",), ("is",)


def json_call(key: str = "arguments") -> tuple:
    """`{"name": "<n>", "<key>": <args>}`."""
    return (S('{"name"'), KS, QNAME, IS, S(json.dumps(key)), KS, ARGS, S("}"))


@dataclass(frozen=True)
class ParamStyle:
    """One parameter of an XML-style call: `open` (with `{key}`, and `{string}` = "true"/"false" where the format
    flags string values) before the value, `close` after it. String values are written raw, others as JSON."""
    open: str
    close: str
    json_strings: bool = False   # string values too are JSON (quoted), as Python call syntax needs


@dataclass(frozen=True)
class CallFormat:
    call: tuple = ()
    prefix: tuple = ()
    sep: tuple = ()
    suffix: tuple = ()
    multi: bool = True                  # the format can carry several calls in one answer
    params: Optional[ParamStyle] = None  # how PARAMS is spelled
    expressible: bool = True            # False: only the arguments JSON is constrained (output_kind arguments_json)
    # Prefix used instead of `prefix` when the calls are in a union with a JSON reply (tool_choice auto +
    # response_format): llguidance decides between a Lark literal and a %json at their first shared byte, so a
    # format whose calls start with `{` must then start with a marker.
    json_union_prefix: Optional[tuple] = None
    # The text that starts a call in free text (`strict` tools in tool_choice auto): from it on the grammar
    # forces a call. None: the first literal of `prefix`, else of `call`; "": the format has none.
    trigger: Optional[str] = None
    # The reasoning block a grammar allows before the calls when the request reasons: (open, close) text. None:
    # the family's reasoning tags (`<think>` / `</think>` unless it has its own).
    reasoning: Optional[tuple[str, str]] = None

    def trigger_text(self) -> Optional[str]:
        if self.trigger is not None:
            return self.trigger or None
        for part in self.prefix + self.call:
            if part[0] in ("m", "s"):
                return part[1]
            if part[0] != "opt":
                return None
        return None


NOT_EXPRESSIBLE = CallFormat(expressible=False)
