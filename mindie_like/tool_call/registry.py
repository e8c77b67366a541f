"""Registry of tool-call processors (MindIE's ToolsCallProcessorManager) and the config-driven resolver."""
from __future__ import annotations

import logging
from typing import Callable

from .engine import ToolCallStream
from .primitives import make_call_id
from .families import BY_FAMILY, FAMILIES, FamilySpec

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

    @property
    def reasoning_markers(self) -> frozenset[str]:
        return self.spec.reasoning_markers

    def new_stream(self, tools=None, *, lenient: bool = True, request_id=None,
                   report_calls: bool = True) -> ToolCallStream:
        return ToolCallStream(self.spec, tools, lenient=lenient, request_id=request_id, report_calls=report_calls)

    def new_call_id(self) -> str:
        """An id for a call the server makes up for this family (guided arguments-only output)."""
        return make_call_id(self.spec.id_style)

    def decode(self, text: str, tools=None, *, lenient: bool = True, request_id=None,
               report_calls: bool = True) -> dict:
        """Non-streaming parse: {"content": str, "tool_calls": [...]} (and "reasoning_content" for a family that
        sorts channels). Never raises."""
        text = text or ""
        try:
            stream = self.new_stream(tools, lenient=lenient, request_id=request_id, report_calls=report_calls)
            stream.feed(text)
            stream.finish()
            if stream.dead:
                return {"content": text, "tool_calls": []} if not self.spec.channels else \
                    {"content": "", "tool_calls": [], "reasoning_content": ""}
            return stream.result()
        except Exception:  # pragma: no cover - the stream already guards itself
            logger.exception("tool-call decode failed (request %s); text returned as content", request_id)
            return {"content": text, "tool_calls": []} if not self.spec.channels else \
                {"content": "", "tool_calls": [], "reasoning_content": ""}

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


def detect_family(model_type: str | None, hf_config: dict | None = None, chat_template: str | None = None) -> str | None:
    """The family a model writes, from its config and chat template (each family's `detect`, most specific
    first); None when no family claims it."""
    mt = (model_type or (hf_config or {}).get("model_type") or "").lower().replace("-", "_")
    cfg, tpl = hf_config or {}, chat_template or ""
    for fam in sorted(FAMILIES, key=lambda f: -f.priority):
        if fam.detect is not None and fam.detect(mt, cfg, tpl):
            return fam.family
    return None



def resolve_tool_call_processor(tool_call_parser: str | None, *, model_type: str | None,
                                hf_config: dict | None = None, chat_template: str | None = None,
                                tokenizer=None) -> ToolsCallProcessor:
    """The processor for a model: the configured name when valid, else the model's default (its family's detector),
    else passthrough. An empty or unknown configured name logs a warning listing the valid names."""
    if tool_call_parser is not None:
        try:
            if not str(tool_call_parser).strip():
                raise KeyError(tool_call_parser)
            return ToolsCallProcessorManager.get_tool_call_processor(str(tool_call_parser).strip())(tokenizer)
        except KeyError:
            logger.warning("tool_call_parser %r is %s; valid names: %s. Using the default for model_type %r.",
                           tool_call_parser, "empty" if not str(tool_call_parser).strip() else "unknown",
                           ", ".join(ToolsCallProcessorManager.names()), model_type)
    family = detect_family(model_type, hf_config, chat_template)
    if family is None:
        logger.info("no tool-call format known for model_type %r: tool calls are not parsed (passthrough); "
                    "set models.<model_type>.tool_call_options.tool_call_parser to one of: %s",
                    model_type, ", ".join(ToolsCallProcessorManager.names()))
        family = "passthrough"
    return PROCESSOR_CLASSES[family](tokenizer)
