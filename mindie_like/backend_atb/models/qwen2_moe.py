"""Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): qwen2's attention (q/k/v biases from `qkv_bias`, per-layer sliding
windows) with a sparse MoE block that adds a shared expert scaled by its sigmoid gate."""
from __future__ import annotations

from typing import Optional

from . import register
from .llama import MLP
from .qwen2 import Qwen2ForCausalLM
from .qwen3_moe import is_sparse_layer, moe_parallel_refusal, qwen_moe_block


@register("qwen2_moe")
class Qwen2MoeForCausalLM(Qwen2ForCausalLM):
    @property
    def qkv_bias(self) -> bool:
        return bool(getattr(self.cfg, "qkv_bias", True))

    def build_mlp(self, i: int, prefix: str):
        if is_sparse_layer(self.cfg, i):
            return qwen_moe_block(self, prefix, shared=True)
        return MLP(self, prefix, self.cfg.intermediate_size)

    @classmethod
    def mlp_parallel_refusal(cls, cfg, world_size: int, moe_ep: int = 1) -> Optional[str]:
        return moe_parallel_refusal(cfg, world_size, moe_ep, cfg.shared_expert_intermediate_size)
