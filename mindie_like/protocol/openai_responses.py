"""Pydantic v2 models of OpenAI's Responses API (POST /v1/responses) as this server serves it: text in and out,
function tools, reasoning items, structured output. What a text-only server cannot do (images, files, hosted
tools, background runs) is refused with 400 naming the field, not silently dropped.

`parse_responses_request(body)` raises ValidationFailure(400). The answers are built as dicts by
serving/responses.py; the `Response*` models below document them (docs/openapi.yaml is generated from them).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .api_common import Lenient, parse_request
from .requests import FUNCTION_NAME_RE, INT32_MAX, Range, SBool, SFloat, SInt, SStr, UINT64_MAX, fmt_value

TEXT_PART_TYPES = ("input_text", "output_text", "text", "summary_text", "reasoning_text")


def _unsupported(message: str, **ctx) -> PydanticCustomError:
    return PydanticCustomError("unsupported", message, ctx or None)


class ContentPart(Lenient):
    """input_text / output_text (and refusal, whose text is kept); images, files and audio are refused."""
    type: SStr
    text: Optional[SStr] = None
    refusal: Optional[SStr] = None

    @model_validator(mode="after")
    def _text_only(self):
        if self.type == "refusal":
            if self.refusal is None:
                raise _unsupported("a 'refusal' part needs a 'refusal' string")
            return self
        if self.type not in TEXT_PART_TYPES:
            raise _unsupported("{t} parts are not supported: this server takes text (input_text, output_text)",
                               t=fmt_value(self.type))
        if self.text is None:
            raise _unsupported("a {t} part needs a 'text' string", t=fmt_value(self.type))
        return self

    def value(self) -> str:
        return self.refusal if self.type == "refusal" else (self.text or "")


Content = Union[SStr, list[ContentPart]]


def content_text(content: Content) -> str:
    return content if isinstance(content, str) else "".join(p.value() for p in content)


class MessageItem(Lenient):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Content
    id: Optional[SStr] = None
    status: Optional[SStr] = None


class FunctionCallItem(Lenient):
    type: Literal["function_call"]
    call_id: SStr
    name: SStr
    arguments: SStr
    id: Optional[SStr] = None
    status: Optional[SStr] = None


class FunctionCallOutputItem(Lenient):
    type: Literal["function_call_output"]
    call_id: SStr
    output: Content
    id: Optional[SStr] = None
    status: Optional[SStr] = None


class ReasoningTextPart(Lenient):
    type: SStr = "reasoning_text"
    text: SStr


class ReasoningItem(Lenient):
    """A reasoning item sent back from an earlier output: its text goes to the next assistant turn."""
    type: Literal["reasoning"]
    id: Optional[SStr] = None
    summary: list[ReasoningTextPart] = []
    content: Optional[list[ReasoningTextPart]] = None
    encrypted_content: Optional[SStr] = None

    def text(self) -> str:
        parts = self.content if self.content else self.summary
        return "".join(p.text for p in parts)


def _item_tag(v: Any) -> Any:
    if isinstance(v, dict):
        return v.get("type", "message" if "role" in v else None)
    return getattr(v, "type", None)


InputItem = Annotated[Union[Annotated[MessageItem, Tag("message")],
                            Annotated[FunctionCallItem, Tag("function_call")],
                            Annotated[FunctionCallOutputItem, Tag("function_call_output")],
                            Annotated[ReasoningItem, Tag("reasoning")]],
                      Discriminator(_item_tag)]


class FunctionTool(Lenient):
    """The Responses API's flat function tool. `strict` defaults to true, as OpenAI documents."""
    type: Literal["function"]
    name: Annotated[SStr, Field(json_schema_extra={"pattern": FUNCTION_NAME_RE.pattern})]
    description: Optional[SStr] = None
    parameters: Optional[dict] = None
    strict: Optional[SBool] = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not FUNCTION_NAME_RE.match(v):
            raise PydanticCustomError("pattern", "{value} does not match ^[a-zA-Z0-9_-]{{1,64}}$",
                                      {"value": fmt_value(v)})
        return v


def _tool_tag(v: Any) -> Any:
    return v.get("type") if isinstance(v, dict) else getattr(v, "type", None)


ResponsesTool = Annotated[Union[Annotated[FunctionTool, Tag("function")]], Discriminator(_tool_tag)]


class TextFormat(Lenient):
    type: Literal["text", "json_object", "json_schema"]
    name: Optional[SStr] = None
    description: Optional[SStr] = None
    json_schema: Optional[dict] = Field(default=None, alias="schema")
    strict: Optional[SBool] = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise PydanticCustomError("unsupported", "type 'json_schema' needs a 'schema'")
        return self


class TextConfig(Lenient):
    format: Optional[TextFormat] = None
    verbosity: Optional[SStr] = None


class ReasoningConfig(Lenient):
    effort: Optional[SStr] = None
    summary: Optional[SStr] = None


def _check_tool_choice(v):
    if v is None or v in ("none", "auto", "required"):
        return v
    if isinstance(v, dict):
        if v.get("type") == "function" and isinstance(v.get("name"), str):
            return {"type": "function", "name": v["name"]}
        if v.get("type") == "allowed_tools" and v.get("mode", "auto") in ("auto", "required") \
                and isinstance(v.get("tools"), list) and v["tools"] \
                and all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in v["tools"]):
            return {"type": "allowed_tools", "mode": v.get("mode", "auto"), "tools": [t["name"] for t in v["tools"]]}
    raise PydanticCustomError("tool_choice", "{value} is not \"none\", \"auto\", \"required\", "
                              "{{\"type\": \"function\", \"name\": ...}} or an allowed_tools choice of functions",
                              {"value": fmt_value(v)})


class ResponsesRequest(Lenient):
    model: Optional[SStr] = None
    input: Union[SStr, Annotated[list[InputItem], Field(min_length=1)]]
    instructions: Optional[SStr] = None
    tools: Optional[list[ResponsesTool]] = None
    tool_choice: Annotated[Optional[Any], Field(json_schema_extra={"anyOf": [
        {"type": "string", "enum": ["none", "auto", "required"]},
        {"type": "object", "required": ["type", "name"], "properties": {"type": {"enum": ["function"]},
                                                                      "name": {"type": "string"}}}]})] = None
    parallel_tool_calls: SBool = True
    reasoning: Optional[ReasoningConfig] = None
    text: Optional[TextConfig] = None
    max_output_tokens: Annotated[Optional[SInt], Range(1, INT32_MAX)] = None
    temperature: Annotated[Optional[SFloat], Range(0, 2)] = None
    top_p: Annotated[Optional[SFloat], Range(0, 1, lo_open=True)] = None
    seed: Annotated[Optional[SInt], Range(0, UINT64_MAX)] = None
    stream: SBool = False
    store: SBool = True
    previous_response_id: Optional[SStr] = None
    metadata: Optional[dict[str, SStr]] = None
    user: Optional[SStr] = None
    background: Optional[SBool] = None
    truncation: Optional[Literal["auto", "disabled"]] = None

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, v):
        return _check_tool_choice(v)

    @field_validator("tools")
    @classmethod
    def _unique(cls, v):
        seen = set()
        for t in v or ():
            if t.name in seen:
                raise PydanticCustomError("tools", "function {value} is declared twice", {"value": fmt_value(t.name)})
            seen.add(t.name)
        return v

    @model_validator(mode="after")
    def _cross(self):
        if self.background:
            raise PydanticCustomError("unsupported", "background: background responses are not supported")
        names = {t.name for t in self.tools or ()}
        tc = self.tool_choice
        if tc == "required" and not names:
            raise PydanticCustomError("tool_choice", "tool_choice \"required\" needs tools")
        wanted = [tc["name"]] if isinstance(tc, dict) and tc["type"] == "function" else \
            (tc["tools"] if isinstance(tc, dict) else [])
        for name in wanted:
            if name not in names:
                raise PydanticCustomError("tool_choice", "function {value} is not among the request's tools",
                                          {"value": fmt_value(name)})
        return self


def parse_responses_request(data: Any) -> ResponsesRequest:
    return parse_request(ResponsesRequest, data)


# ----------------------------------------------------------------------------------------------- answers (docs)

class _Out(Lenient):
    model_config = Lenient.model_config | {"extra": "allow"}


class OutputText(_Out):
    type: Literal["output_text"]
    text: str
    annotations: list = []


class ResponseOutputMessage(_Out):
    type: Literal["message"]
    id: str
    role: Literal["assistant"]
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputText]


class ResponseFunctionCall(_Out):
    type: Literal["function_call"]
    id: str
    call_id: str
    name: str
    arguments: str = Field(description="JSON text of the arguments")
    status: Literal["in_progress", "completed", "incomplete"]


class ResponseReasoning(_Out):
    type: Literal["reasoning"]
    id: str
    summary: list = []
    content: list[ReasoningTextPart]
    status: Literal["in_progress", "completed", "incomplete"]


class ResponseUsage(_Out):
    input_tokens: int
    input_tokens_details: dict
    output_tokens: int
    output_tokens_details: dict
    total_tokens: int


class ResponseObject(_Out):
    id: str
    object: Literal["response"]
    created_at: float
    status: Literal["completed", "incomplete", "in_progress", "failed"]
    model: str
    output: list[Union[ResponseOutputMessage, ResponseFunctionCall, ResponseReasoning]]
    usage: Optional[ResponseUsage] = None
    incomplete_details: Optional[dict] = None
    error: Optional[dict] = None
    previous_response_id: Optional[str] = None


class ResponseDeleted(_Out):
    id: str
    object: Literal["response"]
    deleted: bool


class OpenAIErrorDetail(_Out):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class OpenAIError(_Out):
    """OpenAI's error body."""
    error: OpenAIErrorDetail

