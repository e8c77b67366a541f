"""Qwen2 (Qwen1.5 / 2 / 2.5): the llama decoder with q/k/v biases (no o bias) and per-layer sliding windows
(`use_sliding_window`, `layer_types` or `max_window_layers`)."""
from __future__ import annotations

from typing import Optional

from . import register
from .llama import LlamaForCausalLM


def qwen_layer_window(cfg, i: int) -> Optional[int]:
    sw = getattr(cfg, "sliding_window", None)
    if not getattr(cfg, "use_sliding_window", False) or not sw:
        return None
    types = getattr(cfg, "layer_types", None)
    kind = types[i] if types else ("sliding_attention" if i >= cfg.max_window_layers else "full_attention")
    return int(sw) if kind == "sliding_attention" else None


@register("qwen2")
class Qwen2ForCausalLM(LlamaForCausalLM):
    qkv_bias = True
    o_bias = False

    def layer_window(self, i: int) -> Optional[int]:
        return qwen_layer_window(self.cfg, i)
