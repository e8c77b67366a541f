"""Pydantic v2 models of the OpenAI-compatible requests (/v1/chat/completions, /v1/completions).

Ranges are MindIE's (spec section 4). Unknown fields are ignored. `parse_chat_request` /
`parse_completion_request` turn any validation problem into a `ValidationFailure` (422) whose message names
the parameter, the range (or the expectation) and the value, in one format:

    temperature: -1 is not in [0, inf)
    messages[1].role: Input should be 'system', 'user', 'assistant' or 'tool', got "bot"
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, Strict, ValidationError, ValidationInfo,
                      WithJsonSchema, field_validator, model_validator)
from pydantic_core import PydanticCustomError

from .errors import ValidationFailure, invalid

INT32_MAX = 2**31 - 1
UINT64_MAX = 2**64 - 1
MAX_STOP_STRINGS = 1024
MAX_STOP_LEN = 1024
MAX_TOP_LOGPROBS = 20
FUNCTION_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _fmt_num(x: float) -> str:
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return str(x)


def fmt_value(v: Any) -> str:
    """A request value as the user wrote it (JSON), shortened."""
    if isinstance(v, bool) or v is None:
        s = json.dumps(v)
    elif isinstance(v, (int, float)):
        s = _fmt_num(v) if not (isinstance(v, float) and math.isnan(v)) else "NaN"
    else:
        try:
            s = json.dumps(v, ensure_ascii=False)
        except (TypeError, ValueError):
            s = repr(v)
    return s if len(s) <= 120 else s[:117] + "..."


def range_text(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> str:
    left = "(" if lo_open or math.isinf(lo) else "["
    right = ")" if hi_open or math.isinf(hi) else "]"
    return f"{left}{_fmt_num(lo)}, {_fmt_num(hi)}{right}"


@dataclass(frozen=True, slots=True)
class RangeValidator(AfterValidator):
    """An AfterValidator that also writes its interval into the JSON schema (docs/openapi.yaml is generated
    from these models)."""
    bounds: tuple = ()

    def __get_pydantic_json_schema__(self, core_schema, handler):
        schema = handler(core_schema)
        schema.update(self.bounds)
        return schema


def _json_schema_bounds(lo: float, hi: float, lo_open: bool, hi_open: bool) -> tuple:
    bounds = []
    if not math.isinf(lo):
        bounds.append(("exclusiveMinimum" if lo_open else "minimum", lo))
    if not math.isinf(hi):
        bounds.append(("exclusiveMaximum" if hi_open else "maximum", hi))
    return tuple(bounds)


def Range(lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False):
    """An AfterValidator refusing values outside the interval, with the project's message format."""
    text = range_text(lo, hi, lo_open, hi_open)

    def check(v):
        if v is None:
            return v
        if isinstance(v, float) and math.isnan(v):
            raise PydanticCustomError("range", "{value} is not in {range}", {"value": "NaN", "range": text})
        ok = (v > lo if lo_open or math.isinf(lo) else v >= lo) and (v < hi if hi_open or math.isinf(hi) else v <= hi)
        if not ok:
            raise PydanticCustomError("range", "{value} is not in {range}", {"value": fmt_value(v), "range": text})
        return v

    return RangeValidator(check, _json_schema_bounds(lo, hi, lo_open, hi_open))


SInt = Annotated[int, Strict()]
SFloat = Annotated[float, Strict()]          # strict float still accepts JSON integers
SBool = Annotated[bool, Strict()]
SStr = Annotated[str, Strict()]


def _err(kind: str, message: str, **ctx) -> PydanticCustomError:
    return PydanticCustomError(kind, message, ctx or None)


# ----------------------------------------------------------------------------------------------- messages

class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", json_schema_extra={"required": ["type", "text"]})
    type: Annotated[SStr, Field(json_schema_extra={"enum": ["text"]})]
    text: Annotated[Optional[SStr], WithJsonSchema({"type": "string"})] = None

    @model_validator(mode="after")
    def _text_only(self):
        if self.type != "text":
            raise _err("content_part", "only 'text' content parts are supported, got {t}", t=fmt_value(self.type))
        if self.text is None:
            raise _err("content_part", "a 'text' content part needs a 'text' string")
        return self


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: SStr
    arguments: Union[SStr, dict, None] = None


class AssistantToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: Optional[SStr] = None
    type: Literal["function"] = "function"
    function: FunctionCall


Content = Union[SStr, list[TextPart], None]


def _content_required(*roles: str, also: tuple = ()) -> dict:
    return {"properties": {"role": {"enum": list(roles)},
                           "content": {"anyOf": [{"type": "string"}, {"type": "array"}]}},   # not null
            "required": ["content", *also], "not": {"required": ["tool_calls"]}}


# _per_role below, as JSON schema: which fields each role needs (the published OpenAPI document shows it)
_PER_ROLE_SCHEMA = {"anyOf": [_content_required("system", "user"), {"properties": {"role": {"enum": ["assistant"]}}},
                              _content_required("tool", also=("tool_call_id",))]}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", json_schema_extra=_PER_ROLE_SCHEMA)
    role: Literal["system", "user", "assistant", "tool"]
    content: Content = None
    name: Optional[SStr] = None
    tool_calls: Optional[list[AssistantToolCall]] = None
    tool_call_id: Optional[SStr] = None
    reasoning_content: Optional[SStr] = None

    @model_validator(mode="after")
    def _per_role(self):
        if self.role in ("system", "user") and self.content is None:
            raise _err("content", "a {role} message needs 'content' (a string or a list of text parts)",
                       role=self.role)
        if self.role == "tool":
            if self.tool_call_id is None:
                raise _err("tool_call_id", "a tool message needs 'tool_call_id'")
            if self.content is None:
                raise _err("content", "a tool message needs 'content'")
        if self.tool_calls is not None and self.role != "assistant":
            raise _err("tool_calls", "only assistant messages may carry 'tool_calls'")
        return self

    def text(self) -> str:
        """The content as one string: text parts joined with newlines, null as ""."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text or "" for p in self.content)


# ----------------------------------------------------------------------------------------------- tools

class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: Annotated[SStr, Field(json_schema_extra={"pattern": FUNCTION_NAME_RE.pattern})]
    description: Optional[SStr] = None
    parameters: Optional[dict] = None
    strict: Optional[SBool] = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not FUNCTION_NAME_RE.match(v):
            raise _err("pattern", "{value} does not match ^[a-zA-Z0-9_-]{1,64}$", value=fmt_value(v))
        return v


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"] = "function"
    function: FunctionDefinition


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: Optional[SBool] = False
    continuous_usage_stats: Optional[SBool] = False


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: Optional[SStr] = None
    description: Optional[SStr] = None
    json_schema: Optional[dict] = Field(default=None, alias="schema")
    strict: Optional[SBool] = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.json_schema is None):
            raise _err("json_schema", "type 'json_schema' needs json_schema.schema")
        return self


# ----------------------------------------------------------------------------------------------- sampling

def _check_stop(v):
    if v is None:
        return None
    items = [v] if isinstance(v, str) else v
    if len(items) > MAX_STOP_STRINGS:
        raise _err("stop", "{n} stop strings is more than {m}", n=len(items), m=MAX_STOP_STRINGS)
    for s in items:
        if len(s) > MAX_STOP_LEN:
            raise _err("stop", "a stop string of {n} characters is longer than {m}", n=len(s), m=MAX_STOP_LEN)
        if s == "":
            raise _err("stop", "stop strings may not be empty")
    return list(items)


def _check_top_k(v):
    if v is None or v == -1 or 0 < v <= INT32_MAX:
        return v
    raise _err("range", "{value} is not -1 or in [1, {m}]", value=fmt_value(v), m=INT32_MAX)


class SamplingRequest(BaseModel):
    """Parameters shared by chat and completions."""
    model_config = ConfigDict(extra="ignore")

    model: SStr
    stream: SBool = False
    stream_options: Optional[StreamOptions] = None
    max_tokens: Annotated[Optional[SInt], Range(1, INT32_MAX)] = None
    min_tokens: Annotated[Optional[SInt], Range(0, INT32_MAX)] = None
    temperature: Annotated[Optional[SFloat], Range(0, math.inf)] = None
    top_p: Annotated[Optional[SFloat], Range(0, 1, lo_open=True)] = None
    top_k: Annotated[Optional[SInt], AfterValidator(_check_top_k),
                     Field(json_schema_extra={"anyOf": [{"type": "integer", "enum": [-1]}, {"type": "null"}, {
                         "type": "integer", "minimum": 1, "maximum": INT32_MAX}]})] = None
    min_p: Annotated[Optional[SFloat], Range(0, 1)] = None
    seed: Annotated[Optional[SInt], Range(0, UINT64_MAX)] = None
    presence_penalty: Annotated[Optional[SFloat], Range(-2, 2)] = None
    frequency_penalty: Annotated[Optional[SFloat], Range(-2, 2)] = None
    repetition_penalty: Annotated[Optional[SFloat], Range(0, 2, lo_open=True)] = None
    stop: Annotated[Union[SStr, list[SStr], None], AfterValidator(_check_stop)] = None
    stop_token_ids: Optional[list[Annotated[SInt, Range(0, INT32_MAX)]]] = None
    include_stop_str_in_output: SBool = False
    ignore_eos: SBool = False
    skip_special_tokens: SBool = True
    n: Annotated[Optional[SInt], Field(json_schema_extra={"minimum": 1, "description": "at most the serving "
                                                                                      "layer's max_n (16)"})] = None
    user: Optional[Any] = None

    @field_validator("n")
    @classmethod
    def _n(cls, v, info: ValidationInfo):
        if v is None:
            return v
        max_n = (info.context or {}).get("max_n", 128)
        if not 1 <= v <= max_n:
            raise _err("range", "{value} is not in [1, {m}]", value=fmt_value(v), m=max_n)
        return v

    @field_validator("stop_token_ids")
    @classmethod
    def _stop_ids(cls, v):
        if v is not None and len(v) > MAX_STOP_STRINGS:
            raise _err("stop", "{n} stop token ids is more than {m}", n=len(v), m=MAX_STOP_STRINGS)
        return v

    @property
    def num_choices(self) -> int:
        return self.n or 1

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


NamedChoiceName = str


class ChatCompletionRequest(SamplingRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    tools: Optional[list[Tool]] = None
    tool_choice: Optional[Any] = None
    parallel_tool_calls: SBool = True
    max_completion_tokens: Annotated[Optional[SInt], Range(1, INT32_MAX)] = None
    logprobs: SBool = False
    top_logprobs: Annotated[Optional[SInt], Range(0, MAX_TOP_LOGPROBS)] = None
    response_format: Optional[ResponseFormat] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None
    separate_reasoning: Optional[SBool] = None
    add_generation_prompt: SBool = True

    @field_validator("tools")
    @classmethod
    def _unique_tools(cls, v):
        if v:
            seen = set()
            for t in v:
                if t.function.name in seen:
                    raise _err("tools", "function {value} is declared twice", value=fmt_value(t.function.name))
                seen.add(t.function.name)
        return v

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_shape(cls, v):
        if v is None or v in ("none", "auto", "required"):
            return v
        if isinstance(v, dict):
            fn = v.get("function")
            if v.get("type", "function") == "function" and isinstance(fn, dict) and isinstance(fn.get("name"), str):
                return {"type": "function", "function": {"name": fn["name"]}}
        raise _err("tool_choice", "{value} is not \"none\", \"auto\", \"required\" or "
                   "{\"type\": \"function\", \"function\": {\"name\": ...}}", value=fmt_value(v))

    @model_validator(mode="after")
    def _cross(self):
        tc = self.tool_choice
        names = [t.function.name for t in self.tools or []]
        if tc in ("required",) and not names:
            raise _err("tool_choice", "tool_choice \"required\" needs tools")
        if isinstance(tc, dict):
            if not names:
                raise _err("tool_choice", "a named tool_choice needs tools")
            if tc["function"]["name"] not in names:
                raise _err("tool_choice", "function {value} is not among the request's tools",
                           value=fmt_value(tc["function"]["name"]))
        if self.top_logprobs and not self.logprobs:
            raise _err("top_logprobs", "top_logprobs needs logprobs: true")
        return self

    # -- conveniences for the serving layer
    @property
    def effective_tool_choice(self) -> Union[str, dict]:
        if self.tool_choice is not None:
            return self.tool_choice
        return "auto" if self.tools else "none"

    @property
    def named_function(self) -> Optional[str]:
        tc = self.tool_choice
        return tc["function"]["name"] if isinstance(tc, dict) else None

    @property
    def effective_max_tokens(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def top_logprobs_k(self) -> Optional[int]:
        return (self.top_logprobs or 0) if self.logprobs else None


_TOKEN_IDS = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}
_PROMPT_SCHEMA = {"anyOf": [{"type": "string"}, _TOKEN_IDS,
                            {"type": "array", "minItems": 1, "items": {"anyOf": [{"type": "string"}, _TOKEN_IDS]}}]}


def _normalize_prompt(v):
    """-> list of prompts, each a str or a list of token ids."""
    def is_ids(x):
        return isinstance(x, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in x)

    if isinstance(v, str):
        return [v]
    if is_ids(v) and v:
        return [v]
    if isinstance(v, list) and v and all(isinstance(x, str) or (is_ids(x) and x) for x in v):
        return list(v)
    raise _err("prompt", "{value} is not a string, a list of strings, a list of token ids or a list of such lists "
               "(none empty)", value=fmt_value(v))


class CompletionRequest(SamplingRequest):
    prompt: Annotated[Any, AfterValidator(_normalize_prompt), Field(json_schema_extra=_PROMPT_SCHEMA)]
    echo: SBool = False
    logprobs: Annotated[Optional[SInt], Range(0, MAX_TOP_LOGPROBS)] = None
    suffix: Optional[SStr] = None

    @field_validator("prompt")
    @classmethod
    def _ids_range(cls, v):
        for p in v:
            if isinstance(p, list) and any(i < 0 for i in p):
                raise _err("prompt", "token ids must be >= 0")
        return v

    @property
    def prompts(self) -> list:
        return self.prompt

    @property
    def effective_max_tokens(self) -> Optional[int]:
        return self.max_tokens

    @property
    def top_logprobs_k(self) -> Optional[int]:
        return self.logprobs


# ----------------------------------------------------------------------------------------------- parsing

def _loc_text(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before", "function-wrap", "union", "list", "str", "dict",
                      "int", "float", "bool") or (isinstance(part, str) and ("[" in part or part.startswith("lax-")
                                                                                or part.startswith("json-"))):
            continue  # pydantic's internal union/validator markers
        else:
            out += ("." if out else "") + str(part)
    return out or "request"


_CUSTOM = ("range", "pattern", "content_part", "content", "tool_call_id", "tool_calls", "tool_choice", "tools",
           "stop", "json_schema", "top_logprobs", "prompt")


def format_validation_error(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    # A union reports one error per member: our own checks say more than "Input should be a valid string".
    err = next((e for e in errors if e.get("type") in _CUSTOM), errors[0])
    etype = err.get("type", "")
    loc = _loc_text(err.get("loc", ()))
    if loc == "request" and etype in _CUSTOM:
        loc = etype  # cross-field checks run on the whole model: name the parameter they are about
    if etype == "missing":
        return f"{loc}: field required"
    if etype in _CUSTOM:
        return f"{loc}: {err['msg']}"
    if etype == "too_short":
        return f"{loc}: must not be empty"
    return f"{loc}: {err['msg']}, got {fmt_value(err.get('input'))}"


def _parse(cls, data: Any, context: dict):
    if not isinstance(data, dict):
        raise invalid("request: the body must be a JSON object")
    try:
        return cls.model_validate(data, context=context)
    except ValidationError as e:
        raise invalid(format_validation_error(e)) from None
    except ValidationFailure:
        raise
    except Exception as e:  # never a traceback to the client
        raise invalid(f"request: {e}") from None


def parse_chat_request(data: Any, max_n: int = 128) -> ChatCompletionRequest:
    return _parse(ChatCompletionRequest, data, {"max_n": max_n})


def parse_completion_request(data: Any, max_n: int = 128) -> CompletionRequest:
    return _parse(CompletionRequest, data, {"max_n": max_n})
