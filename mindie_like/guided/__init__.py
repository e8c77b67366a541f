"""mindie_like.guided: constrained decoding (tool_choice, parallel_tool_calls, response_format) with llguidance.

    g = GuidedDecoding(tokenizer)                        # one per model
    plan = g.plan(family, tools, tool_choice, parallel_tool_calls, response_format)   # None: nothing to enforce
    mask = await g.build_mask(plan)                      # or g.build_mask_sync(plan): a fresh LogitsMask
"""
from .core import GuidancePlan, GuidedDecoding
from .formats import FAMILY_ALIASES, FAMILY_FORMATS, FamilyFormat
from .mask import GuidedLogitsMask
from .schema import GuidedDecodingError

FAMILIES = tuple(FAMILY_FORMATS)

__all__ = ["GuidedDecoding", "GuidancePlan", "GuidedLogitsMask", "GuidedDecodingError", "FAMILIES",
           "FAMILY_FORMATS", "FAMILY_ALIASES", "FamilyFormat"]
