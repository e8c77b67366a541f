"""POST /v1/responses (OpenAI's Responses API) without HTTP, on the chat pipeline (serving/api_bridge.py).

Input items become chat messages: `instructions` and leading system/developer messages one system message,
`function_call` items an assistant message's tool calls, `function_call_output` items tool messages, `reasoning`
items the next assistant turn's reasoning. Function tools keep `strict` (true unless the tool says false, as
OpenAI documents) for the guided-decoding layer. The output segments become output items: `reasoning` (its text
as one `reasoning_text` part), `message` (one `output_text` part), `function_call`; the stream sends OpenAI's typed
events with a `sequence_number`. `store` (default true) keeps the answer in the ResponseStore with its
conversation, which `previous_response_id` continues.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

from ..protocol.errors import ValidationFailure
from ..protocol.openai_responses import ResponsesRequest, content_text, parse_responses_request
from .api_bridge import ChatBridge, sse_event
from .chat_segments import CALL, REASONING, TEXT, Assembler, Segment
from .response_store import ResponseStore

ITEM_PREFIX = {REASONING: "rs_", TEXT: "msg_", CALL: "fc_"}


def _id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def not_found(message: str) -> ValidationFailure:
    return ValidationFailure(404, message, "Not Found")


# ----------------------------------------------------------------------------------------------- request → chat

def input_messages(req: ResponsesRequest) -> list[dict]:
    """The request's `input` as chat messages (without `instructions`)."""
    if isinstance(req.input, str):
        return [{"role": "user", "content": req.input}]
    out: list[dict] = []
    reasoning: Optional[str] = None
    for item in req.input:
        if item.type == "reasoning":
            reasoning = (reasoning or "") + item.text()
        elif item.type == "message":
            role = "system" if item.role == "developer" else item.role
            msg = {"role": role, "content": content_text(item.content)}
            if role == "assistant" and reasoning is not None:
                msg["reasoning_content"], reasoning = reasoning, None
            out.append(msg)
        elif item.type == "function_call":
            last = out[-1] if out else None
            if last is None or last["role"] != "assistant":
                last = {"role": "assistant", "content": ""}
                out.append(last)
            if reasoning is not None:
                last["reasoning_content"], reasoning = reasoning, None
            last.setdefault("tool_calls", []).append(
                {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}})
        else:  # function_call_output
            out.append({"role": "tool", "tool_call_id": item.call_id, "content": content_text(item.output)})
    return out


def with_instructions(instructions: Optional[str], messages: list[dict]) -> list[dict]:
    """`instructions` and the leading system messages as one system message (templates want one, first)."""
    k = 0
    while k < len(messages) and messages[k]["role"] == "system":
        k += 1
    parts = ([instructions] if instructions else []) + [m["content"] for m in messages[:k]]
    head = [{"role": "system", "content": "\n\n".join(parts)}] if parts else []
    return head + messages[k:]


def chat_tools(req: ResponsesRequest) -> tuple[Optional[list[dict]], Any]:
    """(chat tools, chat tool_choice). An allowed_tools choice narrows the tools to the allowed ones."""
    if not req.tools:
        return None, None if req.tool_choice is None else req.tool_choice
    tools = req.tools
    tc = req.tool_choice
    if isinstance(tc, dict) and tc["type"] == "allowed_tools":
        tools = [t for t in tools if t.name in set(tc["tools"])]
        tc = tc["mode"]
    elif isinstance(tc, dict):
        tc = {"type": "function", "function": {"name": tc["name"]}}
    out = []
    for t in tools:
        fn = {"name": t.name, "strict": True if t.strict is None else t.strict}
        if t.description is not None:
            fn["description"] = t.description
        if t.parameters is not None:
            fn["parameters"] = t.parameters
        out.append({"type": "function", "function": fn})
    return out, tc


def chat_response_format(req: ResponsesRequest) -> Optional[dict]:
    fmt = req.text.format if req.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    js = {"name": fmt.name or "response", "schema": fmt.json_schema}
    if fmt.strict is not None:
        js["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": js}


# ----------------------------------------------------------------------------------------------- one request

@dataclass
class ResponseRun:
    req: ResponsesRequest
    body: dict
    response_id: str
    created_at: int
    conversation: list[dict]              # chat messages before this answer (instructions excluded)
    chat_request: dict
    assembler: Assembler = field(default_factory=Assembler)
    sequence: int = 0
    item_ids: dict = field(default_factory=dict)     # segment position -> item id
    status: str = "in_progress"
    error: Optional[dict] = None


class ResponsesServing(ChatBridge):
    PARAM_NAMES = {"response_format": "text.format", "max_tokens": "max_output_tokens", "messages": "input"}

    def __init__(self, chat, store: Optional[ResponseStore] = None, metrics: Any = None):
        super().__init__(chat, metrics)
        self.store = store if store is not None else ResponseStore()

    # -- GET / DELETE
    def retrieve(self, response_id: str) -> dict:
        hit = self.store.get(response_id)
        if hit is None:
            raise not_found(f"response_id: no stored response has the id {json.dumps(response_id)}")
        return hit.response

    def delete(self, response_id: str) -> dict:
        if not self.store.delete(response_id):
            raise not_found(f"response_id: no stored response has the id {json.dumps(response_id)}")
        return {"id": response_id, "object": "response", "deleted": True}

    # -- the run
    def _begin(self, body: Any, request_id: str) -> ResponseRun:
        req = parse_responses_request(body)
        if req.model is not None and req.model != self.model_name:
            raise not_found(f"model: the model {json.dumps(req.model)} does not exist")
        history: list[dict] = []
        if req.previous_response_id is not None:
            prev = self.store.get(req.previous_response_id)
            if prev is None:
                raise not_found(f"previous_response_id: no stored response has the id "
                                f"{json.dumps(req.previous_response_id)}")
            history = prev.conversation
        conversation = history + input_messages(req)
        tools, tool_choice = chat_tools(req)
        chat = {"model": self.model_name, "messages": with_instructions(req.instructions, conversation),
                "stream": True, "stream_options": {"include_usage": True},
                "parallel_tool_calls": req.parallel_tool_calls}
        for key, value in (("max_tokens", req.max_output_tokens), ("temperature", req.temperature),
                           ("top_p", req.top_p), ("seed", req.seed), ("tools", tools), ("tool_choice", tool_choice),
                           ("response_format", chat_response_format(req))):
            if value is not None:
                chat[key] = value
        if req.reasoning is not None:
            chat["chat_template_kwargs"] = {"enable_thinking": req.reasoning.effort not in ("none",)}
        return ResponseRun(req=req, body=body, response_id=_id("resp_"), created_at=int(time.time()),
                           conversation=conversation, chat_request=chat)

    # -- the response object and its items
    def _response(self, run: ResponseRun, *, output: Optional[list] = None, usage: Optional[dict] = None) -> dict:
        req = run.req
        fmt = req.text.format.model_dump(by_alias=True, exclude_none=True) if req.text and req.text.format else \
            {"type": "text"}
        reasoning = req.reasoning.model_dump(exclude_none=True) if req.reasoning else {}
        incomplete = {"reason": "max_output_tokens"} if run.status == "incomplete" else None
        tools = [t.model_dump(exclude_none=True) | {"strict": True if t.strict is None else t.strict}
                 for t in req.tools or ()]
        return {
            "id": run.response_id, "object": "response", "created_at": run.created_at, "status": run.status,
            "error": run.error, "incomplete_details": incomplete, "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens, "model": self.model_name, "output": output or [],
            "parallel_tool_calls": req.parallel_tool_calls, "previous_response_id": req.previous_response_id,
            "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
            "store": req.store, "temperature": req.temperature, "text": {"format": fmt},
            "tool_choice": run.body.get("tool_choice") or ("auto" if req.tools else "none"),
            "tools": tools, "top_p": req.top_p, "truncation": req.truncation or "disabled", "usage": usage,
            "user": req.user, "metadata": req.metadata or {},
        }

    def _item(self, run: ResponseRun, seg: Segment, status: str) -> dict:
        item_id = run.item_ids.setdefault(seg.position, _id(ITEM_PREFIX[seg.kind]))
        if seg.kind == REASONING:
            content = [{"type": "reasoning_text", "text": seg.text}] if status != "in_progress" else []
            return {"id": item_id, "type": "reasoning", "summary": [], "content": content, "status": status}
        if seg.kind == TEXT:
            content = [self._text_part(seg.text)] if status != "in_progress" else []
            return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}
        return {"id": item_id, "type": "function_call", "call_id": seg.call_id, "name": seg.name,
                "arguments": seg.text if status != "in_progress" else "", "status": status}

    @staticmethod
    def _text_part(text: str) -> dict:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def _item_status(self, run: ResponseRun, seg: Segment) -> str:
        if seg.kind == CALL and not seg.complete_call:
            return "incomplete"
        last = run.assembler.segments and run.assembler.segments[-1] is seg
        return "incomplete" if last and run.assembler.finish_reason == "length" else "completed"

    def _usage(self, run: ResponseRun) -> Optional[dict]:
        u = run.assembler.usage
        if u is None:
            return None
        return {"input_tokens": u["prompt_tokens"],
                "input_tokens_details": {"cached_tokens": (u.get("prompt_tokens_details") or {}).get(
                    "cached_tokens", 0), "cache_write_tokens": 0},
                "output_tokens": u["completion_tokens"],
                "output_tokens_details": {"reasoning_tokens": (u.get("completion_tokens_details") or {}).get(
                    "reasoning_tokens", 0)},
                "total_tokens": u["total_tokens"]}

    def _output(self, run: ResponseRun) -> list[dict]:
        return [self._item(run, s, self._item_status(run, s)) for s in run.assembler.segments]

    # -- events
    def _ev(self, run: ResponseRun, event_type: str, **fields) -> bytes:
        obj = {"type": event_type, "sequence_number": run.sequence, **fields}
        run.sequence += 1
        return sse_event(event_type, obj)

    def _start_events(self, run: ResponseRun) -> list[bytes]:
        snapshot = self._response(run)
        return [self._ev(run, "response.created", response=snapshot),
                self._ev(run, "response.in_progress", response=snapshot)]

    def _events(self, run: ResponseRun, seg_events) -> list[bytes]:
        out = []
        for e in seg_events:
            seg = e.segment
            at = {"item_id": run.item_ids.get(seg.position), "output_index": seg.position}
            if e.action == "open":
                item = self._item(run, seg, "in_progress")
                at["item_id"] = item["id"]
                out.append(self._ev(run, "response.output_item.added", output_index=seg.position, item=item))
                if seg.kind == REASONING:
                    out.append(self._ev(run, "response.content_part.added", **at, content_index=0,
                                        part={"type": "reasoning_text", "text": ""}))
                elif seg.kind == TEXT:
                    out.append(self._ev(run, "response.content_part.added", **at, content_index=0,
                                        part=self._text_part("")))
            elif e.action == "delta":
                if seg.kind == REASONING:
                    out.append(self._ev(run, "response.reasoning_text.delta", **at, content_index=0, delta=e.delta))
                elif seg.kind == TEXT:
                    out.append(self._ev(run, "response.output_text.delta", **at, content_index=0, delta=e.delta,
                                        logprobs=[]))
                else:
                    out.append(self._ev(run, "response.function_call_arguments.delta", **at, delta=e.delta))
            else:  # close
                if seg.kind == REASONING:
                    out.append(self._ev(run, "response.reasoning_text.done", **at, content_index=0, text=seg.text))
                    out.append(self._ev(run, "response.content_part.done", **at, content_index=0,
                                        part={"type": "reasoning_text", "text": seg.text}))
                elif seg.kind == TEXT:
                    out.append(self._ev(run, "response.output_text.done", **at, content_index=0, text=seg.text,
                                        logprobs=[]))
                    out.append(self._ev(run, "response.content_part.done", **at, content_index=0,
                                        part=self._text_part(seg.text)))
                else:
                    out.append(self._ev(run, "response.function_call_arguments.done", **at, name=seg.name,
                                        arguments=seg.text))
                out.append(self._ev(run, "response.output_item.done", output_index=seg.position,
                                    item=self._item(run, seg, self._item_status(run, seg))))
        return out

    def _end_events(self, run: ResponseRun) -> list[bytes]:
        run.status = "incomplete" if run.assembler.finish_reason == "length" else "completed"
        final = self._answer(run)
        return [self._ev(run, "response.incomplete" if run.status == "incomplete" else "response.completed",
                         response=final)]

    def _error_events(self, run: ResponseRun, failure: ValidationFailure) -> list[bytes]:
        run.status = "failed"
        run.error = {"code": "server_error", "message": failure.message}
        return [self._ev(run, "error", code="server_error", message=failure.message, param=None),
                self._ev(run, "response.failed", response=self._response(run, output=self._output(run),
                                                                          usage=self._usage(run)))]

    def _answer(self, run: ResponseRun) -> dict:
        if run.status == "in_progress":
            run.status = "incomplete" if run.assembler.finish_reason == "length" else "completed"
        return self._response(run, output=self._output(run), usage=self._usage(run))

    def _finished(self, run: ResponseRun) -> None:
        if not run.req.store:
            return
        answer = self._answer(run)
        turn = {"role": "assistant", "content": ""}
        for seg in run.assembler.segments:
            if seg.kind == REASONING:
                turn["reasoning_content"] = turn.get("reasoning_content", "") + seg.text
            elif seg.kind == TEXT:
                turn["content"] += seg.text
            elif seg.complete_call:
                turn.setdefault("tool_calls", []).append(
                    {"id": seg.call_id, "type": "function", "function": {"name": seg.name, "arguments": seg.text}})
        self.store.put(run.response_id, answer, run.conversation + [turn])
