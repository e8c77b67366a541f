"""Registry of tool-call processors (MindIE's ToolsCallProcessorManager) and the config-driven resolver."""
from __future__ import annotations

import logging
from typing import Callable

from .engine import ToolCallStream
from .families import BY_FAMILY, FamilySpec

logger = logging.getLogger("mindie_like.tool_call")


class ToolsCallProcessor:
    """Base of every family's processor. A subclass only names its `spec` (a row of families.FAMILIES)."""

    spec: FamilySpec = BY_FAMILY["passthrough"]

    def __init__(self, tokenizer=None, **_kwargs):
        self.tokenizer = tokenizer  # optional: text-only parsing never needs it

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def special_markers(self) -> frozenset[str]:
        return self.spec.special_markers

    def new_stream(self, tools=None, *, lenient: bool = True, request_id=None) -> ToolCallStream:
        return ToolCallStream(self.spec, tools, lenient=lenient, request_id=request_id)

    def decode(self, text: str, tools=None, *, lenient: bool = True, request_id=None) -> dict:
        """Non-streaming parse: {"content": str, "tool_calls": [...]}. Never raises."""
        text = text or ""
        try:
            stream = self.new_stream(tools, lenient=lenient, request_id=request_id)
            stream.feed(text)
            stream.finish()
            if stream.dead:
                return {"content": text, "tool_calls": []}
            return stream.result()
        except Exception:  # pragma: no cover - the stream already guards itself
            logger.exception("tool-call decode failed (request %s); text returned as content", request_id)
            return {"content": text, "tool_calls": []}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(family={self.family!r})"


class ToolsCallProcessorManager:
    """alias -> processor class. Registration by decorator; lookup raises KeyError on unknown names."""

    _registry: dict[str, type[ToolsCallProcessor]] = {}

    @classmethod
    def register_module(cls, module_names: list[str] | tuple[str, ...] | None = None) -> Callable:
        def deco(proc_cls: type[ToolsCallProcessor]) -> type[ToolsCallProcessor]:
            names = module_names if module_names is not None else proc_cls.spec.aliases
            for name in names:
                key = name.lower()
                if key in cls._registry and cls._registry[key] is not proc_cls:
                    raise ValueError(f"tool call parser name {name!r} registered twice")
                cls._registry[key] = proc_cls
            return proc_cls
        return deco

    @classmethod
    def get_tool_call_processor(cls, name: str) -> type[ToolsCallProcessor]:
        if not isinstance(name, str) or name.lower() not in cls._registry:
            raise KeyError(f"unknown tool_call_parser {name!r}; valid names: {', '.join(cls.names())}")
        return cls._registry[name.lower()]

    @classmethod
    def names(cls) -> list[str]:
        return sorted(cls._registry)

    @classmethod
    def families(cls) -> list[str]:
        return sorted({c.spec.family for c in cls._registry.values()})


def _processor(spec: FamilySpec) -> type[ToolsCallProcessor]:
    proc_cls = type(spec.class_name, (ToolsCallProcessor,), {"spec": spec, "__module__": __name__,
                                                             "__doc__": f"Tool calls of the {spec.family} family."})
    return ToolsCallProcessorManager.register_module()(proc_cls)


# One class per row of the family table, named as MindIE names them (ToolsCallProcessorQwen2_5, ...).
PROCESSOR_CLASSES: dict[str, type[ToolsCallProcessor]] = {s.family: _processor(s) for s in BY_FAMILY.values()}
globals().update({c.__name__: c for c in PROCESSOR_CLASSES.values()})


def _default_family(model_type: str | None, hf_config: dict | None, chat_template: str | None) -> str | None:
    mt = (model_type or (hf_config or {}).get("model_type") or "").lower().replace("-", "_")
    tpl = chat_template or ""
    cfg = hf_config or {}
    name_hint = str(cfg.get("_name_or_path", "")).lower()
    if mt in ("qwen3", "qwen3_moe"):
        return "qwen3_coder" if "<function=" in tpl and "<parameter=" in tpl else "qwen3"
    if mt in ("qwen2", "qwen2_moe"):
        if "<tool_call>" in tpl:
            return "qwen2_5"
        if "✿FUNCTION✿" in tpl:
            return "qwen1_5_or_2"
        if tpl:  # a template without <tool_call>: Qwen1.5 / Qwen2 (tools go through Qwen-Agent's prompt)
            return "qwen1_5_or_2"
        return _qwen2_by_config(cfg)
    if mt == "qwen":
        return "qwen1_5_or_2"
    if mt in ("llama", "llama3", "llama4"):
        return "mistral" if "[TOOL_CALLS]" in tpl else "llama3"
    if mt in ("mistral", "mixtral", "ministral", "mistral3"):
        return "mistral"
    if mt == "chatglm":
        if cfg.get("padded_vocab_size") == 151552 or "glm-4" in name_hint or "glm4" in name_hint:
            return "glm4"
        if "chatglm2" in name_hint:
            return "chatglm2"
        return "chatglm3"
    if mt in ("glm4", "glm"):
        return "glm4"
    if mt in ("deepseek_v2", "deepseek_v3", "deepseekv2", "deepseekv3"):
        return "deepseek_v3"
    if mt in ("deepseek_v32", "deepseekv32"):
        return "deepseek_v32"
    return None


# (hidden_size, intermediate_size) of the Qwen1.5 dense checkpoints (0.5B ... 110B). Qwen2 and Qwen2.5 share
# their sizes with each other, so the config cannot tell those two apart: the chat template can (<tool_call>).
_QWEN1_5_SIZES = {(1024, 2816), (2048, 5504), (2560, 6912), (4096, 11008), (5120, 13696), (5120, 27392),
                  (8192, 24576), (8192, 49152)}


def _qwen2_by_config(cfg: dict) -> str:
    """Qwen1.5 vs Qwen2.5 without a chat template: Qwen1.5's known sizes, else Qwen2.5 (the common case)."""
    if (cfg.get("hidden_size"), cfg.get("intermediate_size")) in _QWEN1_5_SIZES:
        return "qwen1_5_or_2"
    return "qwen2_5"


def resolve_tool_call_processor(tool_call_parser: str | None, *, model_type: str | None,
                                hf_config: dict | None = None, chat_template: str | None = None,
                                tokenizer=None) -> ToolsCallProcessor:
    """The processor for a model: the configured name when valid, else the model's default (by model_type,
    then the chat template's markers), else passthrough. An empty or unknown configured name logs a warning listing the valid names."""
    if tool_call_parser is not None:
        try:
            if not str(tool_call_parser).strip():
                raise KeyError(tool_call_parser)
            return ToolsCallProcessorManager.get_tool_call_processor(str(tool_call_parser).strip())(tokenizer)
        except KeyError:
            logger.warning("tool_call_parser %r is %s; valid names: %s. Using the default for model_type %r.",
                           tool_call_parser, "empty" if not str(tool_call_parser).strip() else "unknown",
                           ", ".join(ToolsCallProcessorManager.names()), model_type)
    family = _default_family(model_type, hf_config, chat_template)
    if family is None:
        logger.info("no tool-call format known for model_type %r: tool calls are not parsed (passthrough); "
                    "set models.<model_type>.tool_call_options.tool_call_parser to one of: %s",
                    model_type, ", ".join(ToolsCallProcessorManager.names()))
        family = "passthrough"
    return PROCESSOR_CLASSES[family](tokenizer)
