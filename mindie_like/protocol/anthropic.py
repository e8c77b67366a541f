"""Pydantic v2 models of Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens) as this server
serves it: text, tool_use / tool_result and thinking blocks; images and documents are refused with 400.

`parse_messages_request(body)` / `parse_count_tokens_request(body)` raise ValidationFailure(400) whose message
names the field (`max_tokens: field required`). The answers are dicts built by serving/anthropic.py; the models
at the end document them (docs/openapi.yaml).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .api_common import Lenient, parse_request
from .requests import FUNCTION_NAME_RE, INT32_MAX, MAX_STOP_LEN, MAX_STOP_STRINGS, Range, SBool, SFloat, SInt, SStr, \
    fmt_value


class TextBlock(Lenient):
    type: Literal["text"]
    text: SStr


class ToolUseBlock(Lenient):
    type: Literal["tool_use"]
    id: SStr
    name: SStr
    input: dict


class ToolResultText(Lenient):
    type: Literal["text"]
    text: SStr


class ToolResultBlock(Lenient):
    type: Literal["tool_result"]
    tool_use_id: SStr
    content: Union[SStr, list[Annotated[Union[Annotated[ToolResultText, Tag("text")]],
                                        Discriminator(lambda v: v.get("type") if isinstance(v, dict)
                                                      else getattr(v, "type", None))]]] = ""
    is_error: Optional[SBool] = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "\n".join(b.text for b in self.content)


class ThinkingBlock(Lenient):
    type: Literal["thinking"]
    thinking: SStr
    signature: SStr


class RedactedThinkingBlock(Lenient):
    type: Literal["redacted_thinking"]
    data: SStr


def _block_tag(v: Any) -> Any:
    return v.get("type") if isinstance(v, dict) else getattr(v, "type", None)


Block = Annotated[Union[Annotated[TextBlock, Tag("text")], Annotated[ToolUseBlock, Tag("tool_use")],
                        Annotated[ToolResultBlock, Tag("tool_result")], Annotated[ThinkingBlock, Tag("thinking")],
                        Annotated[RedactedThinkingBlock, Tag("redacted_thinking")]],
                  Discriminator(_block_tag)]


class AnthropicMessage(Lenient):
    role: Literal["user", "assistant"]
    content: Union[SStr, list[Block]]

    @model_validator(mode="after")
    def _blocks_for_role(self):
        if isinstance(self.content, list):
            for b in self.content:
                if self.role == "user" and b.type in ("tool_use", "thinking", "redacted_thinking"):
                    raise PydanticCustomError("content", "{t} blocks belong to assistant messages", {"t": b.type})
                if self.role == "assistant" and b.type == "tool_result":
                    raise PydanticCustomError("content", "tool_result blocks belong to user messages")
        return self


class AnthropicTool(Lenient):
    name: Annotated[SStr, Field(json_schema_extra={"pattern": FUNCTION_NAME_RE.pattern})]
    description: Optional[SStr] = None
    input_schema: dict
    type: Optional[Literal["custom"]] = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not FUNCTION_NAME_RE.match(v):
            raise PydanticCustomError("pattern", "{value} does not match ^[a-zA-Z0-9_-]{{1,64}}$",
                                      {"value": fmt_value(v)})
        return v


class AnthropicToolChoice(Lenient):
    type: Literal["auto", "any", "tool", "none"]
    name: Optional[SStr] = None
    disable_parallel_tool_use: Optional[SBool] = None

    @model_validator(mode="after")
    def _named(self):
        if self.type == "tool" and self.name is None:
            raise PydanticCustomError("tool_choice", "type \"tool\" needs a 'name'")
        return self


class ThinkingConfig(Lenient):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Annotated[Optional[SInt], Range(1, INT32_MAX)] = None


def _check_stop(v):
    if v is None:
        return v
    if len(v) > MAX_STOP_STRINGS:
        raise PydanticCustomError("stop", "{n} stop sequences is more than {m}", {"n": len(v), "m": MAX_STOP_STRINGS})
    for s in v:
        if not s or len(s) > MAX_STOP_LEN:
            raise PydanticCustomError("stop", "a stop sequence must have 1 to {m} characters", {"m": MAX_STOP_LEN})
    return v


class Conversation(Lenient):
    model: SStr
    messages: Annotated[list[AnthropicMessage], Field(min_length=1)]
    system: Optional[Union[SStr, list[TextBlock]]] = None
    tools: Optional[list[AnthropicTool]] = None
    tool_choice: Optional[AnthropicToolChoice] = None
    thinking: Optional[ThinkingConfig] = None

    @field_validator("tools")
    @classmethod
    def _unique(cls, v):
        seen = set()
        for t in v or ():
            if t.name in seen:
                raise PydanticCustomError("tools", "tool {value} is declared twice", {"value": fmt_value(t.name)})
            seen.add(t.name)
        return v

    @model_validator(mode="after")
    def _choice_names_a_tool(self):
        tc = self.tool_choice
        names = {t.name for t in self.tools or ()}
        if tc is not None and tc.type == "any" and not names:
            raise PydanticCustomError("tool_choice", "tool_choice \"any\" needs tools")
        if tc is not None and tc.type == "tool" and tc.name not in names:
            raise PydanticCustomError("tool_choice", "tool {value} is not among the request's tools",
                                      {"value": fmt_value(tc.name)})
        return self

    def system_text(self) -> Optional[str]:
        if self.system is None or isinstance(self.system, str):
            return self.system
        return "\n".join(b.text for b in self.system)


class MessagesRequest(Conversation):
    max_tokens: Annotated[SInt, Range(1, INT32_MAX)]
    stop_sequences: Annotated[Optional[list[SStr]], Field(json_schema_extra={"maxItems": MAX_STOP_STRINGS})] = None
    stream: SBool = False
    temperature: Annotated[Optional[SFloat], Range(0, 1)] = None
    top_p: Annotated[Optional[SFloat], Range(0, 1, lo_open=True)] = None
    top_k: Annotated[Optional[SInt], Range(1, INT32_MAX)] = None
    metadata: Optional[dict] = None

    @field_validator("stop_sequences")
    @classmethod
    def _stops(cls, v):
        return _check_stop(v)


class CountTokensRequest(Conversation):
    pass


def parse_messages_request(data: Any) -> MessagesRequest:
    return parse_request(MessagesRequest, data)


def parse_count_tokens_request(data: Any) -> CountTokensRequest:
    return parse_request(CountTokensRequest, data)


# ----------------------------------------------------------------------------------------------- answers (docs)

class _Out(Lenient):
    model_config = Lenient.model_config | {"extra": "allow"}


class OutTextBlock(_Out):
    type: Literal["text"]
    text: str


class OutThinkingBlock(_Out):
    type: Literal["thinking"]
    thinking: str
    signature: str = Field(description="HMAC of the thinking text under a per-daemon key: send the block back "
                                       "unchanged (a changed text or signature is refused with 400)")


class OutToolUseBlock(_Out):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict


class MessageUsage(_Out):
    input_tokens: int
    output_tokens: int


class MessageResponse(_Out):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[Union[OutTextBlock, OutThinkingBlock, OutToolUseBlock]]
    stop_reason: Optional[Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]]
    stop_sequence: Optional[str] = None
    usage: MessageUsage


class TokenCount(_Out):
    input_tokens: int


class AnthropicErrorDetail(_Out):
    type: str
    message: str


class AnthropicError(_Out):
    """Anthropic's error body."""
    type: Literal["error"]
    error: AnthropicErrorDetail
