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


# model_types whose checkpoints are another architecture under a new name (their remote code is that
# architecture's): the config is read as that architecture's, the name kept for the tool-call format
SAME_ARCHITECTURE = {"kimi_k2": "deepseek_v3"}


def load_hf_config(model_dir, trust_remote_code: bool = False):
    """The model's transformers config. A `SAME_ARCHITECTURE` model_type is read with its architecture's config
    class (no remote code needed) and keeps its own model_type."""
    import json
    from pathlib import Path

    from transformers import AutoConfig, CONFIG_MAPPING
    raw = json.loads((Path(model_dir) / "config.json").read_text())
    mt = raw.get("model_type")
    if mt in SAME_ARCHITECTURE:
        cls = CONFIG_MAPPING[SAME_ARCHITECTURE[mt]]
        fields = {k: v for k, v in raw.items() if k not in ("model_type", "auto_map", "architectures")}
        cfg = cls.from_dict(fields)
        cfg.model_type = mt
        return cfg
    return AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
