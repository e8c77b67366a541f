"""What the Responses and Messages serving objects share: they translate their request into a chat request,
run ChatServing's pipeline (template, guided decoding, engine, reasoning and tool-call parsing, metrics, limits,
timeouts, abort on disconnect) and read its chunk objects as output segments (serving/chat_segments.py).

A subclass implements `_begin(body, request_id)` (validation and translation: a run object with `chat_request`),
`_events(run, segment_events)` / `_start_events(run)` / `_end_events(run)` (its wire events as bytes),
`_error_events(run, failure)` and `_answer(run)` (the non-streamed answer). Both modes walk the same events, so the
streamed answer and the non-streamed one are built from the same segments.
"""
from __future__ import annotations

import logging
from contextlib import aclosing
from typing import Any, AsyncIterator

from ..protocol.errors import INCOMPLETE_GENERATION, ValidationFailure
from .chat_segments import Assembler
from .common import ObservedServing, Observer, dumps

log = logging.getLogger("mindie_like.serving")


def sse_event(event_type: str, obj: Any) -> bytes:
    """One server-sent event with an `event:` line, as both APIs frame them."""
    return b"event: " + event_type.encode() + b"\ndata: " + dumps(obj) + b"\n\n"


def relabel(failure: ValidationFailure, names: dict[str, str]) -> ValidationFailure:
    """A chat-level refusal reworded with this API's parameter names (`response_format: ...` → `text.format:
    ...`); a 422 (MindIE's validation status) becomes 400, as these APIs answer an invalid request."""
    msg = failure.message
    for chat_name, api_name in names.items():
        if msg.startswith(chat_name + ":") or msg.startswith(chat_name + "["):
            msg = api_name + msg[len(chat_name):]
            break
    status = 400 if failure.status == 422 else failure.status
    return ValidationFailure(status, msg, failure.error_type)


class ChatBridge(ObservedServing):
    """Base of ResponsesServing and MessagesServing."""

    PARAM_NAMES: dict[str, str] = {}

    def __init__(self, chat, metrics: Any = None):
        self.chat = chat
        self.engine = chat.engine
        self.options = chat.options
        self.metrics = metrics
        self.model_name = chat.model_name

    @staticmethod
    def wants_stream(body: Any) -> bool:
        return isinstance(body, dict) and body.get("stream") is True

    # -- subclass hooks
    def _begin(self, body: Any, request_id: str):
        raise NotImplementedError

    def _start_events(self, run) -> list[bytes]:
        return []

    def _events(self, run, seg_events) -> list[bytes]:
        raise NotImplementedError

    def _end_events(self, run) -> list[bytes]:
        return []

    def _error_events(self, run, failure: ValidationFailure) -> list[bytes]:
        raise NotImplementedError

    def _answer(self, run) -> dict:
        raise NotImplementedError

    def _error_chunks(self, failure: ValidationFailure) -> list[bytes]:
        return []      # _stream writes this API's error events itself

    def _finished(self, run) -> None:
        """Called once the answer is complete (the Responses API stores it here)."""

    # -- the shared loop
    async def _chunks(self, run, request_id: str, obs: Observer) -> AsyncIterator[dict]:
        try:
            async with aclosing(self.chat.chunks(run.chat_request, request_id, obs)) as chunks:
                async for chunk in chunks:
                    yield chunk
        except ValidationFailure as e:
            raise relabel(e, self.PARAM_NAMES) from None

    async def _walk(self, run, request_id: str, obs: Observer, streaming: bool) -> AsyncIterator[bytes]:
        """The wire events of the answer (none when not streaming: the segments are all the answer needs)."""
        asm: Assembler = run.assembler
        async with aclosing(self._chunks(run, request_id, obs)) as chunks:
            first = True
            async for chunk in chunks:
                events = asm.feed(chunk)
                if not streaming:
                    continue
                if first:           # the engine accepted the request: the answer starts
                    first = False
                    for b in self._start_events(run):
                        yield b
                for b in self._events(run, events):
                    yield b
        events = asm.finish()
        if streaming:
            for b in self._events(run, events) + self._end_events(run):
                yield b
        self._finished(run)

    async def _create(self, body: Any, request_id: str, obs: Observer) -> dict:
        run = self._begin(body, request_id)
        async with aclosing(self._walk(run, request_id, obs, streaming=False)) as events:
            async for _ in events:
                pass
        obs.usage = run.assembler.usage
        return self._answer(run)

    async def _stream(self, body: Any, request_id: str, obs: Observer) -> AsyncIterator[bytes]:
        """Errors before the first byte raise (the handler answers with a status); later ones become this API's
        error events, and the request counts as failed."""
        run = self._begin(body, request_id)
        sent = False
        try:
            async with aclosing(self._walk(run, request_id, obs, streaming=True)) as events:
                async for b in events:
                    sent = True
                    yield b
        except ValidationFailure as e:
            if not sent:
                raise
            obs.errored = True
            for b in self._error_events(run, e):
                yield b
        except Exception as e:  # noqa: BLE001 - never a traceback to the client
            log.exception("%s stream %s failed", type(self).__name__, request_id)
            failure = ValidationFailure(500, f"internal error ({type(e).__name__})", INCOMPLETE_GENERATION)
            if not sent:
                raise failure from None
            obs.errored = True
            for b in self._error_events(run, failure):
                yield b
        obs.usage = run.assembler.usage
