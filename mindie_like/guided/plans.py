"""Planning: what a request must generate (tool_choice, parallel_tool_calls, response_format, strict tools), as a
GuidancePlan holding the Lark grammar built from the family's CallFormat."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .formats import (EXPLICIT_REASONING, FAMILY_ALIASES, FAMILY_FORMATS, FAMILY_REASONING, FAMILY_VARIANTS,
                      GrammarWriter,
                      arguments_json_call_rule, check_name, free_text_rule, think_prefix)
from .schema import GuidedDecodingError, check_schema, oversized_repeat, strictify, tool_parameters

logger = logging.getLogger(__name__)


@dataclass
class GuidancePlan:
    """What one request must generate. Built by GuidedDecoding.plan(); give it to build_mask()."""
    output_kind: str                       # "family" | "arguments_json" | "json"
    family: str
    grammar: str                           # the Lark grammar (llguidance dialect)
    function_name: Optional[str] = None    # the named tool_choice, or the single function of arguments_json
    prompt_hint: Optional[str] = None      # text for the serving layer to append to the prompt
    tool_names: tuple = ()                 # the tools the grammar allows
    mode: str = "required"                 # "required" | "named" | "json" | "auto_json" | "auto_strict"
    parallel_tool_calls: bool = True       # as enforced (False also where the format holds only one call)
    _build: Optional[Callable[[Callable[[Any], Any]], str]] = field(default=None, repr=False, compare=False)
    # id(schema object in the grammar) -> the request's name for it, for the schemas the client asked to have
    # enforced (response_format's, strict tools'): one that cannot be compiled is refused, never loosened
    _enforce: dict = field(default_factory=dict, repr=False, compare=False)
    _recheck: bool = field(default=False, repr=False, compare=False)   # a tool schema known to need its fallback

    def extract_calls(self, text: str) -> Optional[list[tuple[str, str]]]:
        """For output_kind "arguments_json": the (name, arguments JSON string) calls in a generated text, or None
        when it does not parse (e.g. stopped by max_tokens). Other kinds: None (the family processor parses)."""
        if self.output_kind != "arguments_json":
            return None
        try:
            obj = json.loads(text.strip())
        except ValueError:
            return None
        if not isinstance(obj, dict):
            return None
        if self.function_name is not None:
            return [(self.function_name, json.dumps(obj, ensure_ascii=False))]
        name, args = obj.get("name"), obj.get("arguments", {})
        if name not in self.tool_names or not isinstance(args, dict):
            return None
        return [(name, json.dumps(args, ensure_ascii=False))]


def _normalize_tools(tools: Any) -> list[dict]:
    """OpenAI tools -> [{"name", "parameters"}] (schemas checked; duplicate names refused)."""
    if tools is None:
        return []
    if not isinstance(tools, (list, tuple)):
        raise GuidedDecodingError("tools must be a list")
    out, seen = [], set()
    for i, t in enumerate(tools):
        if hasattr(t, "model_dump"):            # pydantic models from the protocol layer
            t = t.model_dump(exclude_none=True)
        if not isinstance(t, dict):
            raise GuidedDecodingError(f"tools[{i}] must be an object")
        fn = t.get("function", t) if t.get("type", "function") == "function" else None
        if fn is None:
            continue                             # non-function tools are not ours to constrain
        if hasattr(fn, "model_dump"):
            fn = fn.model_dump(exclude_none=True)
        if not isinstance(fn, dict):
            raise GuidedDecodingError(f"tools[{i}].function must be an object")
        name = check_name(fn.get("name"), f"tools[{i}].function.name")
        if name in seen:
            raise GuidedDecodingError(f"tools[{i}].function.name: duplicate function name {json.dumps(name)}")
        seen.add(name)
        params = tool_parameters(fn.get("parameters"), f"tools[{i}].function.parameters")
        # strict: the tool's own say (None: not said, the request's default decides)
        out.append({"name": name, "parameters": params, "strict": fn.get("strict"),
                    "where": f"tools[{i}].function.parameters"})
    return out


def _named_choice(tool_choice: Any) -> Optional[str]:
    if hasattr(tool_choice, "model_dump"):
        tool_choice = tool_choice.model_dump(exclude_none=True)
    if isinstance(tool_choice, dict):
        fn = tool_choice.get("function")
        if hasattr(fn, "model_dump"):
            fn = fn.model_dump(exclude_none=True)
        name = fn.get("name") if isinstance(fn, dict) else tool_choice.get("name")
        if not isinstance(name, str) or not name:
            raise GuidedDecodingError("tool_choice: a named choice needs function.name")
        return name
    raise GuidedDecodingError("tool_choice: expected \"none\", \"auto\", \"required\" or {\"type\": \"function\", "
                              f"\"function\": {{\"name\": ...}}}}, got {json.dumps(tool_choice, default=str)}")


def _response_schema(response_format: Any) -> Optional[Any]:
    """response_format -> the JSON schema to enforce, or None for plain text."""
    if response_format is None:
        return None
    if hasattr(response_format, "model_dump"):
        response_format = response_format.model_dump(exclude_none=True, by_alias=True)
    if not isinstance(response_format, dict):
        raise GuidedDecodingError("response_format must be an object")
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        js = response_format.get("json_schema")
        if not isinstance(js, dict):
            raise GuidedDecodingError("response_format.json_schema must be an object")
        schema = js.get("schema", js.get("schema_"))
        if schema is None:
            return {"type": "object"}
        check_schema(schema, "response_format.json_schema.schema")
        return strictify(schema)
    raise GuidedDecodingError(f"response_format.type: expected text, json_object or json_schema, "
                              f"got {json.dumps(kind)}")


def _reasoning(w: GrammarWriter, fam: str) -> str:
    return think_prefix(w, FAMILY_REASONING.get(fam, ("<think>", "</think>")), explicit=fam in EXPLICIT_REASONING)


class Planner:
    """Mixin of GuidedDecoding (uses its split_specials, special_token_id, separators, strict)."""

    # ---- planning ----
    def plan(self, family: str, tools: Optional[list], tool_choice: Any, parallel_tool_calls: bool = True,
             response_format: Optional[dict] = None, *, reasoning: bool = False,
             strict: bool = False) -> Optional[GuidancePlan]:
        """What the request must generate, or None when nothing is enforced.

        Raises GuidedDecodingError (a ValueError; HTTP 422) for invalid schemas, a named function that is not
        among the tools, "required"/named without tools, an unknown tool_choice or response_format.
        `reasoning=True` (an extension): the grammar first allows a `<think>...</think>` block (the family's
        own tags), for requests where the model reasons before answering.
        `strict`: the default of `function.strict` for tools that do not say. In tool_choice "auto", when any
        tool is strict, the model writes free text until the family's call marker and from the marker on the
        grammar forces well-formed calls of the declared tools (a strict tool's arguments valid for its schema).
        """
        fam = FAMILY_ALIASES.get(family, family)
        fmt = FAMILY_FORMATS.get(fam)
        if fmt is None:
            logger.warning("guided decoding: unknown tool-call family %r, constraining arguments only", family)
            fam, fmt = "passthrough", FAMILY_FORMATS["passthrough"]
        for token, variant in FAMILY_VARIANTS.get(fam, ()):
            if self.special_token_id(token) is not None:
                fmt = variant
                break
        if hasattr(tool_choice, "value"):        # enums
            tool_choice = tool_choice.value
        json_schema = _response_schema(response_format)

        if tool_choice is None or tool_choice in ("auto", "none"):
            if json_schema is None:
                if tool_choice == "none" or not tools:
                    return None
                ntools = _normalize_tools(tools)
                if not any(t["strict"] is True or (t["strict"] is None and strict) for t in ntools):
                    return None
                return self._strict_plan(fam, fmt, ntools, strict, parallel_tool_calls, reasoning)
            ntools = _normalize_tools(tools) if tool_choice != "none" else []   # None with tools means auto
            if ntools and fmt.expressible:
                # Either the family's tool calls or the JSON reply: the processor tells them apart.
                return self._tool_plan(fam, fmt, ntools, None, parallel_tool_calls, json_schema, reasoning)
            return self._json_plan(fam, json_schema, reasoning)

        if tool_choice == "required":
            named = None
        elif isinstance(tool_choice, str):
            raise GuidedDecodingError(f"tool_choice: expected \"none\", \"auto\", \"required\" or a named function, "
                                      f"got {json.dumps(tool_choice)}")
        else:
            named = _named_choice(tool_choice)
        ntools = _normalize_tools(tools)
        if not ntools:
            raise GuidedDecodingError(f"tool_choice: {json.dumps(tool_choice, default=str)} needs at least one "
                                      "function in tools")
        if named is not None:
            sel = [t for t in ntools if t["name"] == named]
            if not sel:
                raise GuidedDecodingError(f"tool_choice: function {json.dumps(named)} is not among the tools "
                                          f"({', '.join(t['name'] for t in ntools)})")
            ntools = sel
        if not fmt.expressible:
            return self._arguments_plan(fam, ntools, named, reasoning)
        return self._tool_plan(fam, fmt, ntools, named, parallel_tool_calls, None, reasoning)

    def _prep(self, schema: Any) -> Any:
        return strictify(schema) if self.strict else schema

    def _finish_plan(self, build: Callable[[Callable[[Any], Any]], str], tools=(), json_schema=None,
                     **kw) -> GuidancePlan:
        enforce = {id(t["parameters"]): t["where"] for t in tools if t.get("strict") is True}
        if json_schema is not None:
            enforce[id(json_schema)] = "response_format.json_schema.schema"
            found = oversized_repeat(json_schema)
            if found:
                raise GuidedDecodingError(f"response_format.json_schema.schema: cannot be enforced: {found}")
        recheck = False
        for t in tools:
            found = oversized_repeat(t["parameters"])
            if found and t.get("strict") is True:
                raise GuidedDecodingError(f"{t['where']}: cannot be enforced: {found}")
            recheck = recheck or bool(found)
        return GuidancePlan(grammar=build(lambda s: s), _build=build, _enforce=enforce, _recheck=recheck, **kw)

    def _prepped(self, tools) -> list[dict]:
        return [dict(t, parameters=self._prep(t["parameters"])) for t in tools]

    def _tool_plan(self, fam, fmt, tools, named, parallel, json_schema, reasoning) -> GuidancePlan:
        tools = self._prepped(tools)
        # a named choice is one call of that function (OpenAI's semantics), whatever parallel_tool_calls says
        parallel = bool(parallel) and fmt.multi and named is None


        def build(resolve):
            w = GrammarWriter(self.split_specials, resolve, self.separators)
            prefix = fmt.json_union_prefix if (json_schema is not None and fmt.json_union_prefix) else fmt.prefix
            self._calls_rule(w, fmt, tools, parallel, prefix)
            body = "tool_calls"
            if json_schema is not None:
                j = w.json_rule("json_reply", json_schema)
                body = f"(tool_calls | {j})"
            start = f"{_reasoning(w, fam)} {body}" if reasoning else body
            w.rules.insert(0, f"start: {start}")
            w.rules.append(f"KEY_SEP: /{self.separators[1]}/")
            w.rules.append(f"ITEM_SEP: /{self.separators[0]}/")
            return w.text()

        return self._finish_plan(build, tools, json_schema, output_kind="family", family=fam, function_name=named,
                                 tool_names=tuple(t["name"] for t in tools),
                                 mode="auto_json" if json_schema is not None else ("named" if named else "required"),
                                 parallel_tool_calls=parallel)

    def _calls_rule(self, w: GrammarWriter, fmt, tools, parallel: bool, prefix) -> str:
        calls = [w.rule(f"call_{i}", w.render(fmt.call, t, fmt)) for i, t in enumerate(tools)]
        w.rule("call", " | ".join(calls))
        if parallel:
            sep = w.render(fmt.sep)
            seq = f"call ({sep} call)*" if sep else "call+"
        else:
            seq = "call"
        return w.rule("tool_calls", " ".join(x for x in (w.render(prefix), seq, w.render(fmt.suffix)) if x))

    def _strict_plan(self, fam, fmt, tools, strict_default, parallel, reasoning) -> Optional[GuidancePlan]:
        """tool_choice auto with strict tools: free text, or free text then calls from the family's marker on."""
        trigger = fmt.trigger_text() if fmt.expressible else None
        if trigger is None:
            logger.warning("guided decoding: strict tools are not enforced for the %s format (no call marker "
                           "to start the grammar at)", fam)
            return None
        # a tool that is not strict: its calls are well-formed, its arguments any JSON object
        tools = [dict(t, parameters=self._prep(t["parameters"]), strict=True)
                 if (t["strict"] is True or (t["strict"] is None and strict_default))
                 else dict(t, parameters={"type": "object"}, strict=False) for t in tools]
        parallel = bool(parallel) and fmt.multi
        prefix = fmt.json_union_prefix or fmt.prefix

        def build(resolve):
            w = GrammarWriter(self.split_specials, resolve, self.separators)
            self._calls_rule(w, fmt, tools, parallel, prefix)
            free = free_text_rule(w, trigger)
            body = f"{free} (tool_calls {free})?"
            start = f"{_reasoning(w, fam)} {body}" if reasoning else body
            w.rules.insert(0, f"start: {start}")
            w.rules.append(f"KEY_SEP: /{self.separators[1]}/")
            w.rules.append(f"ITEM_SEP: /{self.separators[0]}/")
            return w.text()

        return self._finish_plan(build, tools, None, output_kind="family", family=fam,
                                 tool_names=tuple(t["name"] for t in tools), mode="auto_strict",
                                 parallel_tool_calls=parallel)

    def _arguments_plan(self, fam, tools, named, reasoning) -> GuidancePlan:
        tools = self._prepped(tools)
        single = named if named is not None else (tools[0]["name"] if len(tools) == 1 else None)

        def build(resolve):
            w = GrammarWriter(self.split_specials, resolve, self.separators)
            if single is not None:
                body = w.json_rule("args", tools[0]["parameters"])
            else:
                body = " | ".join(arguments_json_call_rule(w, t) for t in tools)
                body = f"({body})"
            start = f"{_reasoning(w, fam)} {body}" if reasoning else body
            w.rules.insert(0, f"start: {start}")
            w.rules.append(f"KEY_SEP: /{self.separators[1]}/")
            w.rules.append(f"ITEM_SEP: /{self.separators[0]}/")
            return w.text()

        if single is not None:
            hint = (f"Call the function {single}. Reply with only its arguments, as one JSON object matching "
                    f"the function's parameters, and nothing else.")
        else:
            names = ", ".join(t["name"] for t in tools)
            hint = (f"Call one of the functions ({names}). Reply with only one JSON object "
                    f"{{\"name\": <function name>, \"arguments\": <its arguments as a JSON object>}} and nothing else.")
        return self._finish_plan(build, tools, None, output_kind="arguments_json", family=fam, function_name=single,
                                 prompt_hint=hint, tool_names=tuple(t["name"] for t in tools),
                                 mode="named" if named else "required", parallel_tool_calls=False)

    def _json_plan(self, fam, schema, reasoning) -> GuidancePlan:
        def build(resolve):
            w = GrammarWriter(self.split_specials, resolve, self.separators)
            j = w.json_rule("json_reply", schema)
            start = f"{_reasoning(w, fam)} {j}" if reasoning else j
            w.rules.insert(0, f"start: {start}")
            return w.text()
        return self._finish_plan(build, (), schema, output_kind="json", family=fam, mode="json",
                                 parallel_tool_calls=False)
