"""mindie_like.reasoning: reasoning splitter (<think> or the family's tags) and the reasoning -> tool-call composition.

    p = ChatOutputParser(processor=proc_or_None, tools=tools_or_None, reasoning=True)
    p.parse(text) -> {"reasoning_content", "content", "tool_calls"}
    s = p.new_stream(); s.feed(delta); s.finish(); s.in_reasoning
"""
from .splitter import ChatOutputParser, ChatOutputStream, ReasoningStream, split_reasoning

__all__ = ["ChatOutputParser", "ChatOutputStream", "ReasoningStream", "split_reasoning"]
