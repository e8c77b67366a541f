"""Qwen3: the llama decoder with a per-head RMSNorm on q and k before rotary, qwen2's sliding windows."""
from __future__ import annotations

from typing import Optional

from . import register
from .llama import LlamaForCausalLM
from .qwen2 import qwen_layer_window


@register("qwen3")
class Qwen3ForCausalLM(LlamaForCausalLM):
    qk_norm = True

    def layer_window(self, i: int) -> Optional[int]:
        return qwen_layer_window(self.cfg, i)
