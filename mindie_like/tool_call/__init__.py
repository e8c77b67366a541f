"""mindie_like.tool_call: tool-call processors for every model family (MindIE's
ToolsCallProcessor names; docs/function_calling.md), streaming and not.

    from mindie_like.tool_call import ToolsCallProcessorManager, resolve_tool_call_processor
    proc = ToolsCallProcessorManager.get_tool_call_processor("qwen2_5")(tokenizer=None)
    proc.decode(text, tools)                 # {"content": str, "tool_calls": [...]}
    s = proc.new_stream(tools); s.feed(delta); s.finish()   # OpenAI delta dicts

Pure text logic: no torch, no HTTP.
"""
from .engine import ToolCallStream, make_call_id
from .families import BY_FAMILY, FAMILIES, FamilySpec
from .json_stream import JsonScanner
from .registry import (
    PROCESSOR_CLASSES, ToolsCallProcessor, ToolsCallProcessorManager, resolve_tool_call_processor,
)

__all__ = [
    "BY_FAMILY", "FAMILIES", "FamilySpec", "JsonScanner", "PROCESSOR_CLASSES", "ToolCallStream",
    "ToolsCallProcessor", "ToolsCallProcessorManager", "make_call_id", "resolve_tool_call_processor",
]
