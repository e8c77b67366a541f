"""`<think>` / `</think>` splitting into reasoning_content and content, and its composition with tool-call parsing.

Rules: a leading `<think>` (after optional whitespace) is dropped, since the chat template may already have
opened it; text before `</think>` is reasoning, the rest is content; without `</think>` everything is reasoning.
Tool calls are parsed in the content part only. Reasoning text is returned as written (not trimmed). The
whitespace right after `</think>` is the template's separator (Qwen3's own template drops it with
`.lstrip('\n')` when it re-renders history), so content starts at the first non-blank character after
`</think>`; the content then goes through the tool-call processor and its rules.
"""
from __future__ import annotations

import logging
import re

logger = logging.getLogger("mindie_like.reasoning")

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
_LEADING_WS = re.compile(r"\s*")


def split_reasoning(text: str) -> tuple[str, str, bool]:
    """-> (reasoning, content, closed): closed says whether `</think>` was seen."""
    j = _LEADING_WS.match(text).end()
    if text.startswith(THINK_OPEN, j):
        text = text[j + len(THINK_OPEN):]
    i = text.find(THINK_CLOSE)
    if i < 0:
        return text, "", False
    return text[:i], text[i + len(THINK_CLOSE):].lstrip(), True


class ReasoningStream:
    """Streaming splitter: feed(delta) -> (reasoning_delta, content_delta)."""

    __slots__ = ("_state", "_buf", "_lead")

    def __init__(self):
        self._state = 0  # 0: start (a <think> may come), 1: reasoning, 2: content
        self._buf = ""
        self._lead = True  # still dropping the whitespace right after </think>

    def _after(self, text: str) -> str:
        if self._lead and text:
            text = text.lstrip()
            self._lead = not text
        return text

    @property
    def in_reasoning(self) -> bool:
        return self._state != 2

    def feed(self, delta: str) -> tuple[str, str]:
        if self._state == 2:
            return "", self._after(delta)
        buf = self._buf + delta
        self._buf = ""
        if self._state == 0:
            j = _LEADING_WS.match(buf).end()
            rest = buf[j:]
            if rest.startswith(THINK_OPEN):
                buf = rest[len(THINK_OPEN):]
            elif THINK_OPEN.startswith(rest):  # only whitespace and a prefix of <think> so far: undecided
                self._buf = buf
                return "", ""
            self._state = 1
        i = buf.find(THINK_CLOSE)
        if i >= 0:
            self._state = 2
            return buf[:i], self._after(buf[i + len(THINK_CLOSE):])
        # hold a suffix that may be the start of </think>
        for k in range(min(len(THINK_CLOSE) - 1, len(buf)), 0, -1):
            if THINK_CLOSE.startswith(buf[-k:]):
                self._buf = buf[-k:]
                return buf[:-k], ""
        return buf, ""

    def finish(self) -> tuple[str, str]:
        buf, self._buf = self._buf, ""
        if self._state == 2:
            return "", self._after(buf)
        if self._state == 0:  # only whitespace and part of "<think>": that is reasoning text
            j = _LEADING_WS.match(buf).end()
            if buf.startswith(THINK_OPEN, j):
                buf = buf[j + len(THINK_OPEN):]
        return buf, ""


class ChatOutputParser:
    """What the chat route uses: reasoning split, then tool-call parsing of the content.

    processor: a ToolsCallProcessor or None. tools: the request's tool list, or None (tool parsing off: that is
    how tool_choice "none" is implemented). reasoning: split <think> reasoning or not.
    """

    def __init__(self, processor=None, tools=None, reasoning: bool = False, lenient: bool = True,
                 request_id=None):
        self.processor = processor
        self.tools = tools or None
        self.reasoning = bool(reasoning)
        self.lenient = lenient
        self.request_id = request_id

    @property
    def parses_tools(self) -> bool:
        return self.processor is not None and self.tools is not None

    def parse(self, text: str) -> dict:
        text = text or ""
        reasoning = None
        content = text
        try:
            if self.reasoning:
                reasoning, content, _ = split_reasoning(text)
        except Exception:  # pragma: no cover - defensive
            logger.exception("reasoning split failed (request %s)", self.request_id)
            reasoning, content = None, text
        if self.parses_tools:
            res = self.processor.decode(content, self.tools, lenient=self.lenient, request_id=self.request_id)
        else:
            res = {"content": content, "tool_calls": []}
        return {"reasoning_content": reasoning, "content": res["content"], "tool_calls": res["tool_calls"]}

    def new_stream(self) -> "ChatOutputStream":
        return ChatOutputStream(self)


class ChatOutputStream:
    def __init__(self, parser: ChatOutputParser):
        self._r = ReasoningStream() if parser.reasoning else None
        self._t = (parser.processor.new_stream(parser.tools, lenient=parser.lenient, request_id=parser.request_id)
                   if parser.parses_tools else None)
        self._request_id = parser.request_id

    @property
    def in_reasoning(self) -> bool:
        """Still inside reasoning after the last feed (count this step's tokens as reasoning tokens)."""
        return self._r is not None and self._r.in_reasoning

    @property
    def tool_calls(self) -> list[dict]:
        """Calls completed so far (what a non-streaming parse would report for them)."""
        return self._t.tool_calls if self._t is not None else []

    def _content(self, text: str, final: bool) -> list[dict]:
        if self._t is None:
            return [{"content": text}] if text else []
        out = self._t.feed(text) if text else []
        if final:
            out += self._t.finish()
        return out

    def feed(self, delta: str) -> list[dict]:
        try:
            if self._r is None:
                return self._content(delta, False)
            reasoning, content = self._r.feed(delta)
            out = [{"reasoning_content": reasoning}] if reasoning else []
            return out + self._content(content, False)
        except Exception:  # pragma: no cover - defensive: never raise to the route
            logger.exception("output parser failed (request %s)", self._request_id)
            return [{"content": delta}] if delta else []

    def finish(self) -> list[dict]:
        try:
            out: list[dict] = []
            content = ""
            if self._r is not None:
                reasoning, content = self._r.finish()
                if reasoning:
                    out.append({"reasoning_content": reasoning})
            return out + self._content(content, True)
        except Exception:  # pragma: no cover - defensive
            logger.exception("output parser failed at finish (request %s)", self._request_id)
            return []
