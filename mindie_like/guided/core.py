"""GuidedDecoding: plans what a request must generate (tool_choice, parallel_tool_calls, response_format) and
hands the engine a fresh per-request LogitsMask over a cached, compiled llguidance grammar."""
from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import llguidance

from .formats import (FAMILY_ALIASES, FAMILY_FORMATS, FAMILY_VARIANTS, GrammarWriter, arguments_json_call_rule,
                      check_name, think_prefix)
from .mask import GuidedLogitsMask
from .tokenizer import ll_tokenizer_for
from .schema import DEFAULT_SEPARATORS, GuidedDecodingError, check_schema, strictify, tool_parameters, with_format

logger = logging.getLogger(__name__)

# End-of-turn tokens of the supported families; those present in the tokenizer (as one token) join its EOS.
_END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>",
                "<｜end▁of▁sentence｜>", "</s>", "<|end|>", "<|user|>", "<|observation|>", "<|return|>")


@dataclass
class GuidancePlan:
    """What one request must generate. Built by GuidedDecoding.plan(); give it to build_mask()."""
    output_kind: str                       # "family" | "arguments_json" | "json"
    family: str
    grammar: str                           # the Lark grammar (llguidance dialect)
    function_name: Optional[str] = None    # the named tool_choice, or the single function of arguments_json
    prompt_hint: Optional[str] = None      # text for the serving layer to append to the prompt
    tool_names: tuple = ()                 # the tools the grammar allows
    mode: str = "required"                 # "required" | "named" | "json" | "auto_json"
    parallel_tool_calls: bool = True       # as enforced (False also where the format holds only one call)
    _build: Optional[Callable[[Callable[[Any], Any]], str]] = field(default=None, repr=False, compare=False)

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
        out.append({"name": name, "parameters": params})
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


class GuidedDecoding:
    """One per model (tokenizer). Builds the llguidance tokenizer once (~1-2 s for a 150k vocabulary)."""

    def __init__(self, tokenizer: Any, *, eos_token_ids: Optional[list[int]] = None, cache_size: int = 128,
                 separators: tuple[str, str] = DEFAULT_SEPARATORS, strict: bool = True,
                 executor: Optional[ThreadPoolExecutor] = None, ll_tokenizer: Any = None):
        self.tokenizer = tokenizer
        self.separators = separators
        self.strict = strict
        eos = list(eos_token_ids) if eos_token_ids else self._default_eos(tokenizer)
        self.eos_token_ids = eos
        if ll_tokenizer is None:
            try:
                ll_tokenizer = ll_tokenizer_for(tokenizer, eos)
            except Exception as e:  # noqa: BLE001
                raise GuidedDecodingError(f"cannot build the grammar tokenizer for {type(tokenizer).__name__}: "
                                          f"{e}") from e
        self.ll_tokenizer = ll_tokenizer
        self.vocab_size = ll_tokenizer.vocab_size
        self._added = {}
        try:
            self._added = dict(tokenizer.get_added_vocab())
        except Exception:  # noqa: BLE001 - tokenizers without added vocab
            pass
        self._markers: dict[str, Optional[int]] = {}
        self._split_cache: dict[str, list] = {}
        # Added tokens llguidance treats as special (never matched through their spelling), longest first.
        self._special_ids = {t: i for t, i in self._added.items()
                             if len(t) > 1 and 0 <= i < self.vocab_size and ll_tokenizer.is_special_token(i)}
        self._special_re = (re.compile("|".join(re.escape(t) for t in sorted(self._special_ids, key=len, reverse=True)))
                            if self._special_ids else None)
        self._inflight: dict[str, threading.Event] = {}
        self._cache: "OrderedDict[str, Any]" = OrderedDict()
        self._cache_size = max(1, int(cache_size))
        self._lock = threading.Lock()
        self._schema_ok: "OrderedDict[str, Any]" = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.compile_ms: list[float] = []       # recent compile times (benchmarks, metrics)
        self._executor = executor or ThreadPoolExecutor(max_workers=2, thread_name_prefix="guided-compile")

    @staticmethod
    def _default_eos(tokenizer: Any) -> list[int]:
        ids = []
        eid = getattr(tokenizer, "eos_token_id", None)
        if isinstance(eid, int):
            ids.append(eid)
        try:
            added = tokenizer.get_added_vocab()
        except Exception:  # noqa: BLE001
            added = {}
        for t in _END_OF_TURN:
            if t in added:
                ids.append(added[t])
        return sorted(set(ids))

    # ---- markers ----
    def marker(self, text: str) -> str:
        """Lark for literal text such as a tool marker: `<[id]>` for special tokens of this tokenizer (the whole
        text, or special tokens inside it), string literals for the rest."""
        return " ".join(f"<[{x}]>" if isinstance(x, int) else json.dumps(x, ensure_ascii=False)
                        for x in self.split_specials(text) if x != "")

    def split_specials(self, text: str) -> list:
        """`text` cut into plain strings and the ids of the special tokens in it, in order."""
        hit = self._split_cache.get(text)
        if hit is not None:
            return hit
        tid = self.special_token_id(text)
        if tid is not None:
            out: list = [tid]
        elif self._special_re is None:
            out = [text]
        else:
            out, pos = [], 0
            for m in self._special_re.finditer(text):
                if m.start() > pos:
                    out.append(text[pos:m.start()])
                out.append(self._special_ids[m.group(0)])
                pos = m.end()
            if pos < len(text):
                out.append(text[pos:])
        if len(self._split_cache) < 4096:
            self._split_cache[text] = out
        return out

    def special_token_id(self, text: str) -> Optional[int]:
        """The id of `text` when it is one added/special token of this tokenizer, else None."""
        if text in self._markers:
            return self._markers[text]
        tid = self._added.get(text)
        if tid is None:   # control tokens some tokenizers keep in the base vocabulary (e.g. [TOOL_CALLS])
            try:
                t = self.tokenizer.convert_tokens_to_ids(text)
            except Exception:  # noqa: BLE001
                t = None
            unk = getattr(self.tokenizer, "unk_token_id", None)
            if isinstance(t, int) and t != unk and 0 <= t < self.vocab_size \
                    and self.ll_tokenizer.is_special_token(t):
                tid = t
        self._markers[text] = tid
        return tid

    # ---- planning ----
    def plan(self, family: str, tools: Optional[list], tool_choice: Any, parallel_tool_calls: bool = True,
             response_format: Optional[dict] = None, *, reasoning: bool = False) -> Optional[GuidancePlan]:
        """What the request must generate, or None when nothing is enforced.

        Raises GuidedDecodingError (a ValueError; HTTP 422) for invalid schemas, a named function that is not
        among the tools, "required"/named without tools, an unknown tool_choice or response_format.
        `reasoning=True` (an extension): the grammar first allows a `<think>...</think>` block, for requests
        where the model reasons before answering.
        """
        fam = FAMILY_ALIASES.get(family, family)
        fmt = FAMILY_FORMATS.get(fam)
        if fmt is None:     # the family comes from the tool-call registry, which knows no other names
            raise LookupError(f"guided decoding: unknown tool-call family {family!r}")
        for token, variant in FAMILY_VARIANTS.get(fam, ()):
            if self.special_token_id(token) is not None:
                fmt = variant
                break
        if hasattr(tool_choice, "value"):        # enums
            tool_choice = tool_choice.value
        json_schema = _response_schema(response_format)

        if tool_choice is None or tool_choice in ("auto", "none"):
            if json_schema is None:
                return None
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

    def _finish_plan(self, build: Callable[[Callable[[Any], Any]], str], **kw) -> GuidancePlan:
        return GuidancePlan(grammar=build(lambda s: s), _build=build, **kw)

    def _tool_plan(self, fam, fmt, tools, named, parallel, json_schema, reasoning) -> GuidancePlan:
        tools = [{"name": t["name"], "parameters": self._prep(t["parameters"])} for t in tools]
        # a named choice is one call of that function (OpenAI's semantics), whatever parallel_tool_calls says
        parallel = bool(parallel) and fmt.multi and named is None

        def build(resolve):
            w = GrammarWriter(self.split_specials, resolve, self.separators)
            calls = [w.rule(f"call_{i}", w.render(fmt.call, t, fmt)) for i, t in enumerate(tools)]
            w.rule("call", " | ".join(calls))
            if parallel:
                sep = w.render(fmt.sep)
                seq = f"call ({sep} call)*" if sep else "call+"
            else:
                seq = "call"
            prefix = fmt.json_union_prefix if (json_schema is not None and fmt.json_union_prefix) else fmt.prefix
            w.rule("tool_calls", " ".join(x for x in (w.render(prefix), seq, w.render(fmt.suffix)) if x))
            body = "tool_calls"
            if json_schema is not None:
                j = w.json_rule("json_reply", json_schema)
                body = f"(tool_calls | {j})"
            start = f"{think_prefix(w)} {body}" if reasoning else body
            w.rules.insert(0, f"start: {start}")
            w.rules.append(f"KEY_SEP: /{self.separators[1]}/")
            w.rules.append(f"ITEM_SEP: /{self.separators[0]}/")
            return w.text()

        return self._finish_plan(build, output_kind="family", family=fam, function_name=named,
                                 tool_names=tuple(t["name"] for t in tools),
                                 mode="auto_json" if json_schema is not None else ("named" if named else "required"),
                                 parallel_tool_calls=parallel)

    def _arguments_plan(self, fam, tools, named, reasoning) -> GuidancePlan:
        tools = [{"name": t["name"], "parameters": self._prep(t["parameters"])} for t in tools]
        single = named if named is not None else (tools[0]["name"] if len(tools) == 1 else None)

        def build(resolve):
            w = GrammarWriter(self.split_specials, resolve, self.separators)
            if single is not None:
                body = w.json_rule("args", tools[0]["parameters"])
            else:
                body = " | ".join(arguments_json_call_rule(w, t) for t in tools)
                body = f"({body})"
            start = f"{think_prefix(w)} {body}" if reasoning else body
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
        return self._finish_plan(build, output_kind="arguments_json", family=fam, function_name=single,
                                 prompt_hint=hint, tool_names=tuple(t["name"] for t in tools),
                                 mode="named" if named else "required", parallel_tool_calls=False)

    def _json_plan(self, fam, schema, reasoning) -> GuidancePlan:
        def build(resolve):
            w = GrammarWriter(self.split_specials, resolve, self.separators)
            j = w.json_rule("json_reply", schema)
            start = f"{think_prefix(w)} {j}" if reasoning else j
            w.rules.insert(0, f"start: {start}")
            return w.text()
        return self._finish_plan(build, output_kind="json", family=fam, mode="json", parallel_tool_calls=False)

    # ---- compiling ----
    def _resolve_schema(self, schema: Any) -> Any:
        """The schema itself when llguidance compiles it; else the same in lenient mode (unsupported keywords
        ignored); else any JSON object. Logged at WARNING; never raises."""
        key = json.dumps(schema, sort_keys=True, ensure_ascii=False)
        with self._lock:
            if key in self._schema_ok:
                self._schema_ok.move_to_end(key)
                return self._schema_ok[key]
        out = schema
        err = self._schema_error(with_format(schema, self.separators))
        if err:
            err2 = self._schema_error(with_format(schema, self.separators, lenient=True))
            if not err2:
                logger.warning("guided decoding: schema not fully supported, unsupported keywords ignored: %s",
                               err[:300])
                out = dict(schema) if isinstance(schema, dict) else {}
                out["x-guidance"] = {"lenient": True}      # kept by with_format()
            else:
                logger.warning("guided decoding: schema cannot be compiled, any JSON object allowed instead: %s",
                               err[:300])
                out = {"type": "object"}
        with self._lock:
            self._schema_ok[key] = out
            while len(self._schema_ok) > 4 * self._cache_size:
                self._schema_ok.popitem(last=False)
        return out

    def _schema_error(self, schema: Any) -> str:
        try:
            g = llguidance.LLMatcher.grammar_from_json_schema(schema)
        except ValueError as e:
            return str(e)
        return llguidance.LLMatcher.validate_grammar(g, self.ll_tokenizer)

    def _new_matcher(self, grammar: str):
        m = llguidance.LLMatcher(self.ll_tokenizer, grammar, log_level=0)
        return m, (m.get_error() if m.is_error() else "")

    def _compiled(self, plan: GuidancePlan):
        """The pristine compiled matcher for the plan's grammar: from the cache, or compiled once even when
        several requests ask for the same new grammar at the same time (the others wait for it)."""
        key = plan.grammar
        while True:
            with self._lock:
                m = self._cache.get(key)
                if m is not None:
                    self._cache.move_to_end(key)
                    self.hits += 1
                    return m
                pending = self._inflight.get(key)
                if pending is None:
                    pending = self._inflight[key] = threading.Event()
                    self.misses += 1
                    break
            pending.wait()          # another thread compiles it; then take it from the cache (or retry)
        try:
            return self._compile(plan)
        finally:
            with self._lock:
                self._inflight.pop(key, None)
            pending.set()

    def _compile(self, plan: GuidancePlan):
        key = plan.grammar
        t0 = time.perf_counter()
        m, err = self._new_matcher(key)
        if err and plan._build is not None:
            logger.info("guided decoding: grammar did not compile (%s); checking its schemas one by one", err[:300])
            m, err = self._new_matcher(plan._build(self._resolve_schema))
        if err:
            raise GuidedDecodingError(f"cannot build the constraint for this request: {err[:500]}")
        self.compile_ms.append((time.perf_counter() - t0) * 1000)
        del self.compile_ms[:-256]
        with self._lock:
            self._cache[key] = m
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return m

    def build_mask_sync(self, plan: GuidancePlan) -> GuidedLogitsMask:
        """A fresh LogitsMask for one request (compiles on a cache miss, in the calling thread)."""
        pristine = self._compiled(plan)
        return GuidedLogitsMask(pristine.deep_copy(), self.vocab_size, self.eos_token_ids, plan)

    async def build_mask(self, plan: GuidancePlan) -> GuidedLogitsMask:
        """Same as build_mask_sync; a compilation runs on a worker thread, never on the event loop."""
        with self._lock:
            cached = self._cache.get(plan.grammar)
            if cached is not None:
                self._cache.move_to_end(plan.grammar)
                self.hits += 1
        if cached is None:
            cached = await asyncio.get_running_loop().run_in_executor(self._executor, self._compiled, plan)
        return GuidedLogitsMask(cached.deep_copy(), self.vocab_size, self.eos_token_ids, plan)

    def cache_info(self) -> dict:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "size": len(self._cache), "max_size": self._cache_size}

    def close(self) -> None:
        self._executor.shutdown(wait=False)

