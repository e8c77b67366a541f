"""Reasoning splitting (`<think>` / `</think>`, or the family's own tags such as Seed-OSS's `<seed:think>`) and its
composition with tool-call parsing.

Rules: a leading open tag (after optional whitespace) is dropped, since the chat template may already have
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


def split_reasoning(text: str, open_tag: str = THINK_OPEN, close_tag: str = THINK_CLOSE) -> tuple[str, str, bool]:
    """-> (reasoning, content, closed): closed says whether the close tag was seen."""
    j = _LEADING_WS.match(text).end()
    if text.startswith(open_tag, j):
        text = text[j + len(open_tag):]
    i = text.find(close_tag)
    if i < 0:
        return text, "", False
    return text[:i], text[i + len(close_tag):].lstrip(), True


class ReasoningStream:
    """Streaming splitter: feed(delta) -> (reasoning_delta, content_delta)."""

    __slots__ = ("_state", "_buf", "_lead", "_open", "_close")

    def __init__(self, open_tag: str = THINK_OPEN, close_tag: str = THINK_CLOSE):
        self._state = 0  # 0: start (an open tag may come), 1: reasoning, 2: content
        self._buf = ""
        self._lead = True  # still dropping the whitespace right after the close tag
        self._open, self._close = open_tag, close_tag

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
            if rest.startswith(self._open):
                buf = rest[len(self._open):]
            elif self._open.startswith(rest):  # only whitespace and a prefix of <think> so far: undecided
                self._buf = buf
                return "", ""
            self._state = 1
        i = buf.find(self._close)
        if i >= 0:
            self._state = 2
            return buf[:i], self._after(buf[i + len(self._close):])
        # hold a suffix that may be the start of </think>
        for k in range(min(len(self._close) - 1, len(buf)), 0, -1):
            if self._close.startswith(buf[-k:]):
                self._buf = buf[-k:]
                return buf[:-k], ""
        return buf, ""

    def finish(self) -> tuple[str, str]:
        buf, self._buf = self._buf, ""
        if self._state == 2:
            return "", self._after(buf)
        if self._state == 0:  # only whitespace and part of "<think>": that is reasoning text
            j = _LEADING_WS.match(buf).end()
            if buf.startswith(self._open, j):
                buf = buf[j + len(self._open):]
        return buf, ""


class ChatOutputParser:
    """What the chat route uses: reasoning split, then tool-call parsing of the content.

    processor: a ToolsCallProcessor or None. tools: the request's tool list, or None (tool parsing off: that is
    how tool_choice "none" is implemented). reasoning: split <think> reasoning or not.
    """

    def __init__(self, processor=None, tools=None, reasoning: bool = False, lenient: bool = True,
                 request_id=None, parse_tools=None):
        self.processor = processor
        self.tools = tools or None
        # parse_tools=True with no tools: every call is parsed, whatever its name (a parser built without tools)
        self._parse_tools = self.tools is not None if parse_tools is None else bool(parse_tools)
        self.reasoning = bool(reasoning)
        self.lenient = lenient
        self.request_id = request_id
        spec = getattr(processor, "spec", None)
        # a family whose grammar sorts its own channels (gpt-oss): its processor runs even without tools
        self.channels = bool(getattr(spec, "channels", False))
        self.tags = tuple(getattr(spec, "reasoning", None) or (THINK_OPEN, THINK_CLOSE))

    @property
    def parses_tools(self) -> bool:
        return self.processor is not None and self._parse_tools

    def _channels_parse(self, text: str) -> dict:
        res = self.processor.decode(text, self.tools, lenient=self.lenient, request_id=self.request_id,
                                    report_calls=self._parse_tools)
        return {"reasoning_content": res.get("reasoning_content", "") if self.reasoning else None,
                "content": res["content"], "tool_calls": res["tool_calls"]}

    def parse(self, text: str) -> dict:
        text = text or ""
        if self.channels:
            return self._channels_parse(text)
        reasoning = None
        content = text
        try:
            if self.reasoning:
                reasoning, content, _ = split_reasoning(text, *self.tags)
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
        self._r = ReasoningStream(*parser.tags) if parser.reasoning and not parser.channels else None
        self._t = (parser.processor.new_stream(parser.tools, lenient=parser.lenient, request_id=parser.request_id,
                                               report_calls=parser.parses_tools)
                   if parser.parses_tools or parser.channels else None)
        self._channels = parser.channels
        self._keep_reasoning = parser.reasoning
        self._request_id = parser.request_id

    @property
    def in_reasoning(self) -> bool:
        """Still inside reasoning after the last feed (count this step's tokens as reasoning tokens)."""
        if self._channels:
            return bool(getattr(self._t, "in_reasoning", False))
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
        if self._channels and not self._keep_reasoning:
            out = [d for d in out if "reasoning_content" not in d]
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
