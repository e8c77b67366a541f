"""The own architectures, one file each, registered by Hugging Face `model_type`.

Adding an architecture is one file in this folder: a `CausalLM` subclass (models/base.py) built from
`backend_atb/layers`, decorated with `@register("<model_type>", ...)`. Every module here is imported on first
use, so nothing else needs to change. A model_type with no class here runs on the generic transformers path.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Optional

_REGISTRY: dict[str, type] = {}
_loaded = False


def register(*model_types: str):
    def deco(cls):
        for mt in model_types:
            if mt in _REGISTRY and _REGISTRY[mt] is not cls:
                raise ValueError(f"model_type {mt!r} registered twice ({_REGISTRY[mt].__name__}, {cls.__name__})")
            _REGISTRY[mt] = cls
        cls.model_types = tuple(getattr(cls, "model_types", ())) + tuple(model_types)
        return cls
    return deco


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for m in pkgutil.iter_modules(__path__):
        if m.name != "base" and not m.name.startswith("_"):
            importlib.import_module(f"{__name__}.{m.name}")
    _loaded = True


def registered_model_types() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def model_class(cfg) -> Optional[type]:
    _load_all()
    return _REGISTRY.get(getattr(cfg, "model_type", ""))


def own_path_supports(cfg) -> tuple[bool, str]:
    """(True, "") when an own architecture runs `cfg`, else (False, why)."""
    cls = model_class(cfg)
    if cls is None:
        return False, f"model_type {getattr(cfg, 'model_type', '')!r} has no own implementation"
    return cls.supports(cfg)


def check_tensor_parallel(cfg, world_size: int, moe_ep: int = 1) -> Optional[str]:
    """Why `cfg` cannot be split over `world_size` ranks, its experts over `moe_ep` slots (None: it can)."""
    cls = model_class(cfg)
    return None if cls is None or world_size == 1 else cls.parallel_refusal(cfg, world_size, moe_ep)


def build_model(cfg, dtype, device, ops, parallel=None, act_dtype=None, load_quant=None):
    cls = model_class(cfg)
    if cls is None:
        raise ValueError(f"model_type {cfg.model_type!r} has no own implementation")
    return cls(cfg, dtype, device, ops, parallel, act_dtype=act_dtype, load_quant=load_quant)


__all__ = ["register", "registered_model_types", "model_class", "own_path_supports", "check_tensor_parallel",
           "build_model"]


# model_types whose checkpoints are another architecture under a new name (their remote code is that
# architecture's): the config is read with that architecture's config class, the name kept for the tool-call
# format and the log
SAME_ARCHITECTURE = {"kimi_k2": "deepseek_v3"}


def load_hf_config(model_dir, trust_remote_code: bool = False):
    """The model's transformers config (AutoConfig), a `SAME_ARCHITECTURE` model_type read without remote code."""
    import json
    from pathlib import Path

    from transformers import CONFIG_MAPPING, AutoConfig
    raw = json.loads((Path(model_dir) / "config.json").read_text())
    mt = raw.get("model_type")
    if mt in SAME_ARCHITECTURE:
        fields = {k: v for k, v in raw.items() if k not in ("model_type", "auto_map", "architectures")}
        cfg = CONFIG_MAPPING[SAME_ARCHITECTURE[mt]].from_dict(fields)
        cfg.model_type = mt
        return cfg
    return AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
