"""Mistral: the llama decoder with one sliding window (`sliding_window`) on every layer."""
from __future__ import annotations

from typing import Optional

from . import register
from .llama import LlamaForCausalLM


@register("mistral")
class MistralForCausalLM(LlamaForCausalLM):
    def layer_window(self, i: int) -> Optional[int]:
        sw = getattr(self.cfg, "sliding_window", None)
        return int(sw) if sw else None
