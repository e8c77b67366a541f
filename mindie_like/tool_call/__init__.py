"""mindie_like.tool_call: tool-call processors for every model family, streaming and not.

    from mindie_like.tool_call import ToolsCallProcessorManager, resolve_tool_call_processor
    proc = ToolsCallProcessorManager.get_tool_call_processor("qwen2_5")(tokenizer=None)
    proc.decode(text, tools)                 # {"content": str, "tool_calls": [...]}
    s = proc.new_stream(tools); s.feed(delta); s.finish()   # OpenAI delta dicts

Each family is one object (families/*.py); pure text logic: no torch, no HTTP.
"""
from .engine import ToolCallStream
from .families import BY_FAMILY, FAMILIES, Family, FamilySpec
from .json_stream import JsonScanner
from .primitives import make_call_id
from .registry import (
    PROCESSOR_CLASSES, ToolsCallProcessor, ToolsCallProcessorManager, detect_family, resolve_tool_call_processor,
)


def call_id_for(family: str | None) -> str:
    """A new call id in the style of `family` (any name or alias; unknown: `call_` + 8 alphanumerics)."""
    proc = ToolsCallProcessorManager._registry.get(str(family or "").lower())
    return make_call_id(proc.spec.id_style if proc is not None else "call")


__all__ = [
    "BY_FAMILY", "FAMILIES", "Family", "FamilySpec", "JsonScanner", "PROCESSOR_CLASSES", "ToolCallStream",
    "ToolsCallProcessor", "ToolsCallProcessorManager", "call_id_for", "detect_family", "make_call_id",
    "resolve_tool_call_processor",
]
