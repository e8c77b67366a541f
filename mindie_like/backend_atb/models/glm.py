"""The GLM-4 family: `glm` (GLM-4-9B-chat-hf), `glm4` (GLM-4-0414: a norm after attention and one after the
MLP, each applied before its residual add) and `glm4_moe` (GLM-4.5 / 4.6 / 4.7: routed experts with sigmoid scores
and shared experts after `first_k_dense_replace` dense layers, optional q/k norms).

Rotary is partial (`partial_rotary_factor`, 0.5 by default): only the first head_dim*factor dims of q and k turn.
`glm` / `glm4` rotate interleaved pairs (GPT-J layout, their native weights); transformers' `glm4_moe` rotates the
half-split way. q/k/v carry a bias (`attention_bias`), o_proj none. GLM-4 checkpoints store the MLP's gate and up
projections as one `gate_up_proj` (gate rows first); glm4_moe's dense layers store them apart, as llama does.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..layers import MergedColumnParallelLinear, RMSNorm, RotaryEmbedding, RowParallelLinear
from ..layers.interleaved_rope import rotary_dim_of
from ..layers.rotary import SUPPORTED_ROPE, rope_type_of
from . import register
from .deepseek_v3 import first_dense, sigmoid_moe_block, sigmoid_moe_parallel_refusal
from .llama import MLP, DecoderLayer, LlamaForCausalLM


class CheckpointFusedGateUp(MergedColumnParallelLinear):
    """gate and up stacked in one checkpoint tensor `<mlp>.gate_up_proj` [2 x intermediate, hidden]: a rank
    reads the whole tensor and keeps its rows of each half (two row ranges, which one slice cannot say)."""

    def __init__(self, prefix: str, hidden: int, intermediate: int, pl):
        super().__init__(prefix, hidden, [intermediate, intermediate], False, pl, [prefix, prefix])
        self.intermediate = intermediate
        self.sources = [(prefix, None)]

    def shard_spec(self, leaf: str, shard_id=None):
        return None

    def load(self, leaf: str, tensor: torch.Tensor, shard_id=None) -> None:
        n, r = self.local_sizes[0], self.pl.par.rank
        for part in (0, 1):
            rows = tensor.narrow(0, part * self.intermediate + r * n, n)
            self.fill_rows(self.offsets[part], n, rows, f"{self.prefix}.{leaf}[{part}]")


class GlmMLP(MLP):
    def __init__(self, model, prefix: str, intermediate: int):
        pl, H = model.pl, model.cfg.hidden_size
        self.gate_up_proj = CheckpointFusedGateUp(prefix + ".gate_up_proj", H, intermediate, pl)
        self.down_proj = RowParallelLinear(prefix + ".down_proj", intermediate, H, False, pl)


class Glm4DecoderLayer(DecoderLayer):
    """GLM-4-0414: post_self_attn_layernorm on the attention output and post_mlp_layernorm on the MLP output,
    before each residual add."""

    def __init__(self, model, i: int, rotary):
        super().__init__(model, i, rotary)
        p = f"model.layers.{i}"
        self.post_self_attn_layernorm = RMSNorm(p + ".post_self_attn_layernorm", model.hidden, model.eps, model.pl)
        self.post_mlp_layernorm = RMSNorm(p + ".post_mlp_layernorm", model.hidden, model.eps, model.pl)

    def forward(self, ctx, h, residual, kv_cache):
        ops = ctx.ops
        if residual is None:
            residual = h
            x = self.input_layernorm.forward(ops, h)
        else:
            x, residual = self.input_layernorm.add_forward(ops, h, residual)
        h = self.post_self_attn_layernorm.forward(ops, self.self_attn.forward(ctx, x, kv_cache))
        x, residual = self.post_attention_layernorm.add_forward(ops, h, residual)
        return self.post_mlp_layernorm.forward(ops, self.mlp.forward(ctx, x)), residual


@register("glm")
class GlmForCausalLM(LlamaForCausalLM):
    interleaved = True
    o_bias = False

    @classmethod
    def supports(cls, cfg) -> tuple[bool, str]:
        if rope_type_of(cfg) not in SUPPORTED_ROPE:
            return False, f"rope type {rope_type_of(cfg)!r} not in the own implementation"
        if getattr(cfg, "hidden_act", "silu") not in ("silu", "swish"):
            return False, f"activation {cfg.hidden_act!r} not in the own implementation"
        return True, ""

    @property
    def qkv_bias(self) -> bool:
        return bool(getattr(self.cfg, "attention_bias", False))

    def build_rotary(self) -> RotaryEmbedding:
        return RotaryEmbedding(self.cfg, self.head_dim, min(self.max_pos, 8192), self.device,
                               rotary_dim=rotary_dim_of(self.cfg, self.head_dim), is_neox_style=not self.interleaved)

    def build_mlp(self, i: int, prefix: str):
        return GlmMLP(self, prefix, self.cfg.intermediate_size)


@register("glm4")
class Glm4ForCausalLM(GlmForCausalLM):
    layer_cls = Glm4DecoderLayer


@register("glm4_moe")
class Glm4MoeForCausalLM(GlmForCausalLM):
    interleaved = False

    @classmethod
    def mlp_parallel_refusal(cls, cfg, world_size: int, moe_ep: int = 1) -> Optional[str]:
        return sigmoid_moe_parallel_refusal(cfg, world_size, moe_ep)

    @property
    def qk_norm(self) -> bool:
        return bool(getattr(self.cfg, "use_qk_norm", False))

    def build_mlp(self, i: int, prefix: str):
        if i < first_dense(self.cfg):
            return MLP(self, prefix, self.cfg.intermediate_size)
        return sigmoid_moe_block(self, prefix)
