"""The family table: what each model family writes, as data.

A family is a set of trigger markers, each mapped to one of the shared call grammars in `engine.py`, plus a few
switches (a name line at the start of a segment, bare JSON objects, the separator between calls, the id style).
Adding a family is adding a row here; the scanner, the JSON handling and every parsing rule (docs/function_calling.md) are shared.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# DeepSeek markers use full-width bars (U+FF5C) and U+2581 for the spaces.
DS_CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
DS_CALLS_END = "<｜tool▁calls▁end｜>"
DS_CALL_BEGIN = "<｜tool▁call▁begin｜>"
DS_CALL_END = "<｜tool▁call▁end｜>"
DS_SEP = "<｜tool▁sep｜>"
DSML_CALLS_BEGIN = "<｜DSML｜function_calls>"
DSML_CALLS_END = "</｜DSML｜function_calls>"
DSML_INVOKE = "<｜DSML｜invoke"
DSML_INVOKE_END = "</｜DSML｜invoke>"
DSML_PARAM = "<｜DSML｜parameter"
DSML_PARAM_END = "</｜DSML｜parameter>"


@dataclass(frozen=True)
class FamilySpec:
    family: str                       # canonical name
    class_name: str                   # MindIE's class name (ours for families MindIE lacks)
    aliases: tuple[str, ...]          # every registry name that selects it
    triggers: tuple[tuple[str, str], ...] = ()   # (literal marker in the text, grammar that parses from it)
    line_start: str | None = None     # grammar tried at the start of the output and after a segment marker
    line_start_ws: bool = False       # whitespace allowed before that name line
    bare_json: bool = False           # native bare `{"name": ..., "parameters": ...}` objects (Llama 3)
    call_separator: str | None = None  # consumed after a call (Llama 3's ';')
    id_style: str = "call"            # "call": call_ + 8 alphanumerics; "mistral": 9 alphanumerics
    passthrough: bool = False         # no tool syntax at all: everything is content
    extra_markers: tuple[str, ...] = field(default=())  # more special tokens the detokenizer must keep

    @property
    def special_markers(self) -> frozenset[str]:
        return frozenset([t for t, _ in self.triggers] + list(self.extra_markers))


FAMILIES: tuple[FamilySpec, ...] = (
    FamilySpec("passthrough", "ToolsCallProcessorPassthrough", ("passthrough",), passthrough=True),
    FamilySpec("chatglm2", "ToolsCallProcessorChatglmV2",
               ("chatglm2_6b", "chatglm_v2_6b", "chatglm_v2", "chatglm2"), passthrough=True),
    FamilySpec("chatglm3", "ToolsCallProcessorChatglmV3",
               ("chatglm3_6b", "chatglm_v3_6b", "chatglm_v3", "chatglm3"),
               triggers=(("<|assistant|>", "segment"),), line_start="python_call"),
    FamilySpec("glm4", "ToolsCallProcessorChatglmV4",
               ("chatglm4_9b", "chatglm_v4_9b", "glm_4", "glm_4_9b", "glm4", "chatglm4"),
               triggers=(("<|assistant|>", "segment"),), line_start="name_json", line_start_ws=True),
    FamilySpec("deepseek_v3", "ToolsCallProcessorDeepseekv3",
               ("deepseek_v2", "deepseek_v3", "deepseekv2", "deepseekv3"),
               triggers=((DS_CALLS_BEGIN, "ds_v3"), (DS_CALL_BEGIN, "ds_v3")),
               extra_markers=(DS_CALLS_END, DS_CALL_END, DS_SEP)),
    FamilySpec("deepseek_v31", "ToolsCallProcessorDeepseekv31", ("deepseek_v31", "deepseekv31"),
               triggers=((DS_CALLS_BEGIN, "ds_v31"), (DS_CALL_BEGIN, "ds_v31")),
               extra_markers=(DS_CALLS_END, DS_CALL_END, DS_SEP)),
    FamilySpec("deepseek_v32", "ToolsCallProcessorDeepseekv32", ("deepseek_v32", "deepseekv32"),
               triggers=((DSML_CALLS_BEGIN, "dsml"),),
               extra_markers=(DSML_CALLS_END, DSML_INVOKE, DSML_INVOKE_END, DSML_PARAM, DSML_PARAM_END)),
    FamilySpec("llama3", "ToolsCallProcessorLlama", ("llama", "llama3", "llama3_1"),
               triggers=(("<|python_tag|>", "python_tag"),), bare_json=True, call_separator=";"),
    FamilySpec("qwen1_5_or_2", "ToolsCallProcessorQwen1_5_or_2",
               ("qwen1_5", "qwen_1_5", "qwen2", "qwen_2", "qwen1_5_or_2", "qwen_1_5_or_2"),
               triggers=(("✿FUNCTION✿", "qwen_agent"),), extra_markers=("✿ARGS✿", "✿RESULT✿", "✿RETURN✿")),
    FamilySpec("qwen2_5", "ToolsCallProcessorQwen2_5", ("qwen2_5", "qwen_2_5", "qwen25"),
               triggers=(("<tool_call>", "hermes"),), extra_markers=("</tool_call>",)),
    FamilySpec("qwen3", "ToolsCallProcessorQwen3", ("qwen3", "qwen3_moe", "hermes"),
               triggers=(("<tool_call>", "hermes"),), extra_markers=("</tool_call>",)),
    FamilySpec("qwen3_coder", "ToolsCallProcessorQwen3Coder", ("qwen3_coder", "qwen3coder"),
               triggers=(("<tool_call>", "hermes"), ("<function=", "xml_function")),
               extra_markers=("</tool_call>",)),
    FamilySpec("mistral", "ToolsCallProcessorMistral", ("mistral",),
               triggers=(("[TOOL_CALLS]", "mistral"),), id_style="mistral",
               extra_markers=("[ARGS]", "[CALL_ID]")),
)

BY_FAMILY: dict[str, FamilySpec] = {f.family: f for f in FAMILIES}
