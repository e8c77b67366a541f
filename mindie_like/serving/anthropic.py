"""POST /v1/messages and /v1/messages/count_tokens (Anthropic's Messages API) without HTTP, on the chat pipeline
(serving/api_bridge.py).

Blocks become chat messages: `system` the system message, `text` blocks content, `tool_use` an assistant's tool
calls (input as JSON arguments), `tool_result` tool messages, `thinking` the assistant's reasoning. tool_choice
auto / any / tool / none is the chat's auto / required / named / none. The output segments become content
blocks: `thinking` (with a signature), `text`, `tool_use`.

Thinking signatures: an HMAC-SHA256 of the thinking text under a key drawn when the daemon starts. A thinking
block sent back must carry its signature unchanged (a changed text or signature is a 400, as Anthropic answers);
after a restart old signatures no longer verify.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

from pydantic_core import from_json

from ..protocol.anthropic import (CountTokensRequest, MessagesRequest, Conversation, parse_count_tokens_request,
                                  parse_messages_request)
from ..protocol.api_common import invalid_request
from ..protocol.errors import ValidationFailure
from .api_bridge import ChatBridge, relabel, sse_event
from .chat_segments import CALL, REASONING, TEXT, Assembler, Segment

STOP_REASONS = {"tool_calls": "tool_use", "length": "max_tokens"}


class ThinkingSigner:
    def __init__(self, key: Optional[bytes] = None):
        self.key = key or secrets.token_bytes(32)

    def sign(self, thinking: str) -> str:
        mac = hmac.new(self.key, b"thinking\0" + thinking.encode("utf-8"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")

    def verify(self, thinking: str, signature: str) -> bool:
        return hmac.compare_digest(self.sign(thinking), signature)


# ----------------------------------------------------------------------------------------------- request → chat

def chat_messages(req: Conversation, signer: ThinkingSigner) -> list[dict]:
    out: list[dict] = []
    system = req.system_text()
    if system:
        out.append({"role": "system", "content": system})
    for i, m in enumerate(req.messages):
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
            continue
        texts, calls, thinking = [], [], []
        for j, b in enumerate(m.content):
            if b.type == "text":
                texts.append(b.text)
            elif b.type == "tool_use":
                calls.append({"id": b.id, "type": "function",
                              "function": {"name": b.name, "arguments": json.dumps(b.input, ensure_ascii=False)}})
            elif b.type == "tool_result":    # answers the previous assistant turn: before this turn's text
                out.append({"role": "tool", "tool_call_id": b.tool_use_id, "content": b.text()})
            elif b.type == "thinking":
                if not signer.verify(b.thinking, b.signature):
                    raise invalid_request(f"messages[{i}].content[{j}].signature: the signature does not match "
                                          f"the thinking text (send thinking blocks back unchanged)")
                thinking.append(b.thinking)
            # redacted_thinking: never produced here; accepted and left out
        if m.role == "assistant":
            msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
            if thinking:
                msg["reasoning_content"] = "".join(thinking)
            if calls:
                msg["tool_calls"] = calls
            out.append(msg)
        elif texts:
            out.append({"role": "user", "content": "\n".join(texts)})
    return out


def chat_request(req: Conversation, model_name: str, signer: ThinkingSigner) -> dict:
    chat: dict[str, Any] = {"model": model_name, "messages": chat_messages(req, signer), "stream": True,
                            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    if req.tools:
        chat["tools"] = [{"type": "function", "function": {"name": t.name, "parameters": t.input_schema,
                                                           **({"description": t.description}
                                                              if t.description is not None else {})}}
                         for t in req.tools]
    tc = req.tool_choice
    if tc is not None:
        chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(tc.type) or \
            {"type": "function", "function": {"name": tc.name}}
        if tc.disable_parallel_tool_use:
            chat["parallel_tool_calls"] = False
    if req.thinking is not None:
        chat["chat_template_kwargs"] = {"enable_thinking": req.thinking.type != "disabled"}
    if isinstance(req, MessagesRequest):
        chat["max_tokens"] = req.max_tokens
        for key, value in (("stop", req.stop_sequences), ("temperature", req.temperature), ("top_p", req.top_p),
                           ("top_k", req.top_k)):
            if value is not None:
                chat[key] = value
    return chat


def tool_input(arguments: str) -> dict:
    """A call's arguments as the tool_use `input` object; the readable prefix of arguments the output cut off."""
    try:
        value = from_json(arguments or "{}", allow_partial=True)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# ----------------------------------------------------------------------------------------------- one request

@dataclass
class MessageRun:
    req: MessagesRequest
    message_id: str
    chat_request: dict
    assembler: Assembler = field(default_factory=Assembler)


class MessagesServing(ChatBridge):
    PARAM_NAMES = {"stop": "stop_sequences", "response_format": "output_format"}

    def __init__(self, chat, metrics: Any = None, signer: Optional[ThinkingSigner] = None):
        super().__init__(chat, metrics)
        self.signer = signer or ThinkingSigner()

    def _check_model(self, model: str) -> None:
        if model != self.model_name:
            raise ValidationFailure(404, f"model: the model {json.dumps(model)} does not exist", "Not Found")

    def _begin(self, body: Any, request_id: str) -> MessageRun:
        req = parse_messages_request(body)
        self._check_model(req.model)
        return MessageRun(req=req, message_id="msg_" + uuid.uuid4().hex,
                          chat_request=chat_request(req, self.model_name, self.signer))

    async def count_tokens(self, body: Any, request_id: str) -> dict:
        req: CountTokensRequest = parse_count_tokens_request(body)
        self._check_model(req.model)
        try:
            n = await self.chat.count_prompt_tokens(chat_request(req, self.model_name, self.signer), request_id)
        except ValidationFailure as e:
            raise relabel(e, self.PARAM_NAMES) from None
        return {"input_tokens": n}

    # -- the message and its blocks
    def _stop(self, run: MessageRun) -> tuple[str, Optional[str]]:
        a = run.assembler
        if a.finish_reason in STOP_REASONS:
            return STOP_REASONS[a.finish_reason], None
        if isinstance(a.stop_reason, str) and a.stop_reason in (run.req.stop_sequences or ()):
            return "stop_sequence", a.stop_reason
        return "end_turn", None

    def _block(self, seg: Segment) -> dict:
        if seg.kind == REASONING:
            return {"type": "thinking", "thinking": seg.text, "signature": self.signer.sign(seg.text)}
        if seg.kind == TEXT:
            return {"type": "text", "text": seg.text}
        return {"type": "tool_use", "id": seg.call_id, "name": seg.name, "input": tool_input(seg.text)}

    @staticmethod
    def _usage(run: MessageRun, final: bool) -> dict:
        u = (run.assembler.usage if final else run.assembler.first_usage) or {}
        cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        return {"input_tokens": u.get("prompt_tokens", 0), "output_tokens": u.get("completion_tokens", 0) if final
                else 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached}

    def _message(self, run: MessageRun, content: list, stop: tuple, final: bool) -> dict:
        return {"id": run.message_id, "type": "message", "role": "assistant", "model": self.model_name,
                "content": content, "stop_reason": stop[0], "stop_sequence": stop[1],
                "usage": self._usage(run, final)}

    def _answer(self, run: MessageRun) -> dict:
        return self._message(run, [self._block(s) for s in run.assembler.segments], self._stop(run), final=True)

    # -- events
    def _start_events(self, run: MessageRun) -> list[bytes]:
        start = {"type": "message_start", "message": self._message(run, [], (None, None), final=False)}
        return [sse_event("message_start", start), sse_event("ping", {"type": "ping"})]

    def _events(self, run: MessageRun, seg_events) -> list[bytes]:
        out = []
        for e in seg_events:
            seg, index = e.segment, e.segment.position
            if e.action == "open":
                block = {REASONING: {"type": "thinking", "thinking": "", "signature": ""},
                         TEXT: {"type": "text", "text": ""},
                         CALL: {"type": "tool_use", "id": seg.call_id, "name": seg.name, "input": {}}}[seg.kind]
                out.append(sse_event("content_block_start", {"type": "content_block_start", "index": index,
                                                             "content_block": block}))
            elif e.action == "delta":
                delta = {REASONING: {"type": "thinking_delta", "thinking": e.delta},
                         TEXT: {"type": "text_delta", "text": e.delta},
                         CALL: {"type": "input_json_delta", "partial_json": e.delta}}[seg.kind]
                out.append(sse_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                             "delta": delta}))
            else:
                if seg.kind == REASONING:
                    signature = {"type": "signature_delta", "signature": self.signer.sign(seg.text)}
                    out.append(sse_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                                 "delta": signature}))
                out.append(sse_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        return out

    def _end_events(self, run: MessageRun) -> list[bytes]:
        stop_reason, stop_sequence = self._stop(run)
        usage = self._usage(run, final=True)
        return [sse_event("message_delta", {"type": "message_delta",
                                            "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                                            "usage": usage}),
                sse_event("message_stop", {"type": "message_stop"})]

    def _error_events(self, run: MessageRun, failure: ValidationFailure) -> list[bytes]:
        kind = "overloaded_error" if failure.status == 503 else "api_error"
        return [sse_event("error", {"type": "error", "error": {"type": kind, "message": failure.message}})]
