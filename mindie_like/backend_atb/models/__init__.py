"""Architectures beyond the llama family, one module per family, looked up by Hugging Face `model_type`.
Each module has MODEL_TYPES, MODEL_CLASS and check_supported(cfg) -> None or why the own path cannot serve it."""
from __future__ import annotations

from types import ModuleType
from typing import Optional


def own_architecture(model_type: str) -> Optional[ModuleType]:
    from . import deepseek_v3, glm
    for mod in (deepseek_v3, glm):
        if model_type in mod.MODEL_TYPES:
            return mod
    return None
