"""JSON schema handling for constrained decoding: a cheap structural check (bad schemas are the client's
fault: GuidedDecodingError -> HTTP 422), the strict-mode rewrite, and the llguidance formatting options.

Nothing here imports llguidance; what happens to schemas llguidance cannot compile lives in core.py, which runs
it at compile time (off the event loop).
"""
from __future__ import annotations

import copy
import json
import re
from typing import Any, Optional

JSON_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})

# Keywords whose value is one schema / a list of schemas / a map of schemas.
_SUB_ONE = ("items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else",
            "unevaluatedProperties", "unevaluatedItems", "additionalItems")
_SUB_LIST = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUB_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_NONNEG_INT = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
_NUMBER = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")

# The JSON text the models write: `{"a": 1, "b": "x"}` (Python's json.dumps) or the compact `{"a":1,"b":"x"}`;
# never newlines, tabs or `\r\n` (a grammar that allows any whitespace lets a model wander into `{\r\n` tokens
# and never close the object).
DEFAULT_SEPARATORS = (", ?", ": ?")   # regexes: item separator, key separator


# llguidance's lexer builds regex derivatives lazily; a counted repetition of thousands (`a{20000}`) compiles and
# then fails mid-answer ("too many expressions constructed" after ~280 tokens on the Qwen2.5 vocabulary), so such
# patterns are judged unenforceable up front. 1,000 is a bound with room: `a{2000}` ran through 3,000 tokens.
MAX_PATTERN_REPEAT = 1000
_COUNTED = re.compile(r"(?<!\\)\{(\d+)(?:,(\d*))?\}")


def oversized_repeat(schema: Any, _depth: int = 0) -> Optional[str]:
    """The first `pattern` (or patternProperties key) with a counted repetition over MAX_PATTERN_REPEAT, as an
    error message; None when there is none."""
    if _depth > 64:
        return None
    if isinstance(schema, dict):
        texts = [schema["pattern"]] if isinstance(schema.get("pattern"), str) else []
        if isinstance(schema.get("patternProperties"), dict):
            texts += [k for k in schema["patternProperties"] if isinstance(k, str)]
        for text in texts:
            for m in _COUNTED.finditer(text):
                if max(int(m.group(1)), int(m.group(2) or 0)) > MAX_PATTERN_REPEAT:
                    return (f"pattern {json.dumps(text[:80])}: a counted repetition over {MAX_PATTERN_REPEAT} "
                            "cannot be enforced")
        children = schema.values()
    elif isinstance(schema, list):
        children = schema
    else:
        return None
    for child in children:
        found = oversized_repeat(child, _depth + 1)
        if found:
            return found
    return None


class GuidedDecodingError(ValueError):
    """The request asks for something that cannot be enforced: an invalid JSON schema, a named tool_choice
    that is not among the tools, `required` without tools, a malformed response_format... The serving layer
    reports it as HTTP 422 (Input Validation Error); the message names the offending part."""


def check_schema(schema: Any, where: str, _depth: int = 0) -> None:
    """Raise GuidedDecodingError when `schema` is not a structurally valid JSON schema.

    This is deliberately a shape check of the keywords that matter for generation (types, properties,
    required, enum, bounds, combinators), not a full metaschema validation: what llguidance cannot compile is
    judged later (core.py): refused for response_format and strict tools, a logged fallback for other tools.
    """
    if _depth > 64:
        raise GuidedDecodingError(f"{where}: JSON schema nested too deeply")
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise GuidedDecodingError(f"{where}: a JSON schema must be an object or a boolean, "
                                  f"got {type(schema).__name__}")
    t = schema.get("type")
    if t is not None:
        types = t if isinstance(t, list) else [t]
        if not types or any(not isinstance(x, str) or x not in JSON_TYPES for x in types):
            raise GuidedDecodingError(f"{where}: invalid \"type\" {json.dumps(t)} (one of "
                                      f"{', '.join(sorted(JSON_TYPES))}, or a list of them)")
    req = schema.get("required")
    if req is not None and (not isinstance(req, list) or any(not isinstance(x, str) for x in req)):
        raise GuidedDecodingError(f"{where}: \"required\" must be a list of property names")
    if "enum" in schema and (not isinstance(schema["enum"], list) or not schema["enum"]):
        raise GuidedDecodingError(f"{where}: \"enum\" must be a non-empty list")
    for k in _NONNEG_INT:
        if k in schema:
            v = schema[k]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise GuidedDecodingError(f"{where}: \"{k}\" must be a non-negative integer, got {json.dumps(v)}")
    for k in _NUMBER:
        if k in schema:
            v = schema[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise GuidedDecodingError(f"{where}: \"{k}\" must be a number, got {json.dumps(v)}")
    if "multipleOf" in schema and schema["multipleOf"] <= 0:
        raise GuidedDecodingError(f"{where}: \"multipleOf\" must be > 0")
    for lo, hi in (("minLength", "maxLength"), ("minItems", "maxItems"), ("minimum", "maximum"),
                   ("minProperties", "maxProperties")):
        if lo in schema and hi in schema and schema[lo] > schema[hi]:
            raise GuidedDecodingError(f"{where}: \"{lo}\" ({schema[lo]}) is greater than \"{hi}\" ({schema[hi]})")
    if "pattern" in schema and not isinstance(schema["pattern"], str):
        raise GuidedDecodingError(f"{where}: \"pattern\" must be a string")
    if "$ref" in schema and not isinstance(schema["$ref"], str):
        raise GuidedDecodingError(f"{where}: \"$ref\" must be a string")
    for k in _SUB_ONE:
        if k in schema and not (k == "items" and isinstance(schema[k], list)):
            check_schema(schema[k], f"{where}.{k}", _depth + 1)
    if isinstance(schema.get("items"), list):          # draft 4-7 tuple form
        for i, s in enumerate(schema["items"]):
            check_schema(s, f"{where}.items[{i}]", _depth + 1)
    for k in _SUB_LIST:
        if k in schema:
            v = schema[k]
            if not isinstance(v, list) or not v:
                raise GuidedDecodingError(f"{where}: \"{k}\" must be a non-empty list of schemas")
            for i, s in enumerate(v):
                check_schema(s, f"{where}.{k}[{i}]", _depth + 1)
    for k in _SUB_MAP:
        if k in schema:
            v = schema[k]
            if not isinstance(v, dict):
                raise GuidedDecodingError(f"{where}: \"{k}\" must be an object")
            for name, s in v.items():
                check_schema(s, f"{where}.{k}.{name}", _depth + 1)


def strictify(schema: Any) -> Any:
    """A copy where every object schema that lists `properties` and says nothing about
    `additionalProperties` gets `additionalProperties: false` (OpenAI's strict mode, xgrammar's default).

    Without it, JSON schema semantics allow any extra key, and a model under constraint can wander into
    inventing keys forever. Objects without `properties` (`{"type": "object"}`) stay free-form.
    """
    schema = copy.deepcopy(schema)
    _strictify_in_place(schema)
    return schema


def _strictify_in_place(s: Any) -> None:
    if not isinstance(s, dict):
        return
    if isinstance(s.get("properties"), dict) and "additionalProperties" not in s \
            and "patternProperties" not in s and "unevaluatedProperties" not in s:
        s["additionalProperties"] = False
    for k in _SUB_ONE:
        if k in s:
            if isinstance(s[k], list):
                for x in s[k]:
                    _strictify_in_place(x)
            else:
                _strictify_in_place(s[k])
    for k in _SUB_LIST:
        for x in s.get(k) or ():
            _strictify_in_place(x)
    for k in _SUB_MAP:
        v = s.get(k)
        if isinstance(v, dict):
            for x in v.values():
                _strictify_in_place(x)


def tool_parameters(params: Any, where: str) -> dict:
    """The arguments schema of a tool: checked, `None`/`{}` -> any JSON object, `type: object` implied."""
    if params is None or params == {}:
        return {"type": "object"}
    check_schema(params, where)
    if isinstance(params, bool):
        return {"type": "object"} if params else {"type": "object", "maxProperties": 0}
    if "type" not in params and not any(k in params for k in ("anyOf", "oneOf", "allOf", "$ref", "enum", "const")):
        params = dict(params, type="object")
    if params.get("type") not in (None, "object") and params.get("type") != ["object"]:
        raise GuidedDecodingError(f"{where}: tool parameters must be an object schema, "
                                  f"got type {json.dumps(params.get('type'))}")
    return params


def with_format(schema: Any, separators: tuple[str, str] = DEFAULT_SEPARATORS, lenient: bool = False) -> dict:
    """Attach llguidance's top-level `x-guidance` options: no free whitespace, the given separators."""
    if isinstance(schema, bool):
        schema = {} if schema else {"not": {}}
    opts = {"item_separator": separators[0], "key_separator": separators[1], "whitespace_flexible": False}
    if lenient or (isinstance(schema.get("x-guidance"), dict) and schema["x-guidance"].get("lenient")):
        opts["lenient"] = True
    out = dict(schema)
    out["x-guidance"] = opts
    return out


def schema_types(schema: Any) -> set[str]:
    """The JSON types a (sub)schema admits, as far as its own keywords tell (empty: unknown / anything)."""
    if not isinstance(schema, dict):
        return set()
    t = schema.get("type")
    if isinstance(t, str):
        return {t}
    if isinstance(t, list):
        return set(t)
    vals = schema.get("enum")
    if "const" in schema:
        vals = [schema["const"]]
    if isinstance(vals, list) and vals:
        out = set()
        for v in vals:
            out.add("string" if isinstance(v, str) else "other")
        return out
    return set()
