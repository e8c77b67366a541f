"""Chat stream chunks → ordered output segments (reasoning, text, one per tool call), for the APIs whose answer
is a list of typed parts: the Responses API's output items and the Messages API's content blocks.

Both APIs build their streamed events AND their non-streamed answer from the same segment events, so the two
agree by construction. Whitespace follows the chat answer's rules (docs/function_calling.md): text that is only
whitespace does not open a text segment; trailing whitespace is held until more text comes, dropped when a call
follows or ends the output, kept when the output has no call; leading whitespace after a call is dropped.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

REASONING, TEXT, CALL = "reasoning", "text", "call"


@dataclass
class Segment:
    kind: str                       # REASONING | TEXT | CALL
    position: int                   # 0, 1, ... in output order
    text: str = ""                  # reasoning or text; a call's arguments (JSON text)
    call_id: Optional[str] = None
    name: Optional[str] = None
    closed: bool = False

    @property
    def complete_call(self) -> bool:
        """A call whose arguments are a whole JSON object (false when the output was cut inside it)."""
        try:
            return isinstance(json.loads(self.text), dict)
        except ValueError:
            return False


@dataclass
class SegmentEvent:
    action: str                     # "open" | "delta" | "close"
    segment: Segment
    delta: str = ""


@dataclass
class Assembler:
    """Feed it the chunk objects of ChatServing.chunks() (one choice); read `segments`, `finish_reason`,
    `stop_reason`, `usage` after `finish()`."""
    segments: list[Segment] = field(default_factory=list)
    finish_reason: Optional[str] = None
    stop_reason: Any = None
    usage: Optional[dict] = None
    first_usage: Optional[dict] = None     # the first chunk's usage (continuous_usage_stats): the prompt size
    _open: Optional[Segment] = None
    _calls: dict = field(default_factory=dict)
    _held_ws: str = ""
    _saw_call: bool = False

    def feed(self, chunk: dict) -> list[SegmentEvent]:
        out: list[SegmentEvent] = []
        usage = chunk.get("usage")
        if usage is not None:
            self.first_usage = self.first_usage or usage
            self.usage = usage
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                self._reasoning(delta["reasoning_content"], out)
            if delta.get("content"):
                self._text(delta["content"], out)
            for tc in delta.get("tool_calls") or ():
                self._call(tc, out)
            if choice.get("finish_reason") is not None:
                self.finish_reason = choice["finish_reason"]
                self.stop_reason = choice.get("stop_reason")
        return out

    def finish(self) -> list[SegmentEvent]:
        out: list[SegmentEvent] = []
        if self._held_ws and not self._saw_call:
            self._text_out(self._held_ws, out)
        self._held_ws = ""
        if not self.segments:        # an empty answer is one empty text part, not no part at all
            self._switch(Segment(TEXT, 0), out)
        self._close(out)
        return out

    # -- internals
    def _close(self, out: list) -> None:
        if self._open is not None:
            self._open.closed = True
            out.append(SegmentEvent("close", self._open))
            self._open = None

    def _switch(self, seg: Segment, out: list) -> Segment:
        self._close(out)
        self.segments.append(seg)
        self._open = seg
        out.append(SegmentEvent("open", seg))
        return seg

    def _delta(self, seg: Segment, text: str, out: list) -> None:
        if text:
            seg.text += text
            out.append(SegmentEvent("delta", seg, text))

    def _reasoning(self, text: str, out: list) -> None:
        seg = self._open if self._open is not None and self._open.kind == REASONING else \
            self._switch(Segment(REASONING, len(self.segments)), out)
        self._delta(seg, text, out)

    def _text(self, text: str, out: list) -> None:
        text = self._held_ws + text
        body = text.rstrip()
        self._held_ws = text[len(body):]
        if body:
            self._text_out(body, out)

    def _text_out(self, text: str, out: list) -> None:
        if self._open is None or self._open.kind != TEXT:
            if self._saw_call:
                text = text.lstrip()
                if not text:
                    return
            self._switch(Segment(TEXT, len(self.segments)), out)
        self._delta(self._open, text, out)

    def _call(self, tc: dict, out: list) -> None:
        fn = tc.get("function") or {}
        index = tc.get("index", 0)
        seg = self._calls.get(index)
        if seg is None or tc.get("id") is not None and seg.call_id != tc["id"]:
            self._held_ws = ""
            self._saw_call = True
            seg = self._switch(Segment(CALL, len(self.segments), call_id=tc.get("id") or "",
                                       name=fn.get("name") or ""), out)
            self._calls[index] = seg
        self._delta(seg, fn.get("arguments") or "", out)
