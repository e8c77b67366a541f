"""Llama (and the decoder every dense family here shares): pre-norm, GQA attention with rotary, SwiGLU MLP.

Config switches read here: `attention_bias` (q/k/v and o biases), `mlp_bias`, `tie_word_embeddings`,
rope_theta and rope scaling (linear, llama3, yarn), `head_dim`. Families differ by overriding the class hooks:
`qkv_bias` / `o_bias`, `qk_norm` (qwen3's per-head RMSNorm on q and k), `layer_windows` (sliding windows).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..layers import (MergedColumnParallelLinear, Module, PagedAttention, ParallelLMHead, QKVParallelLinear,
                      RMSNorm, RotaryEmbedding, RowParallelLinear, VocabParallelEmbedding)
from ..layers.rotary import SUPPORTED_ROPE, rope_type_of
from . import decode_stack, register
from .base import CausalLM


class Attention(Module):
    """qkv projection -> (q/k norm) -> rotary -> paged attention -> o projection (row-parallel)."""

    def __init__(self, model: "LlamaForCausalLM", prefix: str, window: Optional[int], rotary: RotaryEmbedding):
        cfg, pl = model.cfg, model.pl
        D = model.head_dim
        self.qkv_proj = QKVParallelLinear(prefix + ".qkv_proj", cfg.hidden_size, D, model.num_heads_total,
                                          model.num_kv_heads_total, model.qkv_bias, pl,
                                          [prefix + ".q_proj", prefix + ".k_proj", prefix + ".v_proj"])
        self.o_proj = RowParallelLinear(prefix + ".o_proj", model.num_heads_total * D, cfg.hidden_size,
                                        model.o_bias, pl)
        self.q_norm = RMSNorm(prefix + ".q_norm", D, model.eps, pl) if model.qk_norm else None
        self.k_norm = RMSNorm(prefix + ".k_norm", D, model.eps, pl) if model.qk_norm else None
        self.num_heads, self.num_kv_heads, self.head_dim = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads, D
        self.q_size, self.kv_size = self.qkv_proj.q_size, self.qkv_proj.kv_size
        self.rotary = rotary
        self.attn = PagedAttention(self.num_heads, self.num_kv_heads, D, model.scale_value, window)

    def forward(self, ctx, x: torch.Tensor, kv_cache) -> torch.Tensor:
        ops = ctx.ops
        T = x.shape[0]
        Hq, Hk, D = self.num_heads, self.num_kv_heads, self.head_dim
        q_size, kv_size = self.q_size, self.kv_size
        qkv = self.qkv_proj.forward(ops, x)
        v = qkv[:, q_size + kv_size:].view(T, Hk, D)
        if ctx.fused_decode and self.rotary.full:
            q, k = qkv[:, :q_size].view(T, Hq, D), qkv[:, q_size:q_size + kv_size].view(T, Hk, D)
            if self.q_norm is not None:
                q, k = self.q_norm.forward(ops, q), self.k_norm.forward(ops, k)
            o = self.attn.forward_rope_decode(ops, q, k, v, kv_cache, ctx.meta, self.rotary.cos_sin, ctx.positions)
        else:
            tables = ctx.rope_tables(self.rotary)
            if self.q_norm is not None:
                q = self.q_norm.forward(ops, qkv[:, :q_size].view(T, Hq, D))
                k = self.k_norm.forward(ops, qkv[:, q_size:q_size + kv_size].view(T, Hk, D))
                q, k = self.rotary.apply_heads(ops, q, tables), self.rotary.apply_heads(ops, k, tables)
            else:       # q and k are adjacent in the fused qkv output: one rotary pass over both
                qk = self.rotary.apply_heads(ops, qkv[:, :q_size + kv_size].view(T, Hq + Hk, D), tables)
                q, k = qk[:, :Hq], qk[:, Hq:]
            o = self.attn.forward(ops, q, k, v, kv_cache, ctx.meta)
        return self.o_proj.forward(ops, o)


class MLP(Module):
    """SwiGLU: gate and up merged (column-parallel), down row-parallel."""

    def __init__(self, model: "LlamaForCausalLM", prefix: str, intermediate: int, bias: bool = False,
                 reduce: bool = True):
        pl, H = model.pl, model.cfg.hidden_size
        self.gate_up_proj = MergedColumnParallelLinear(prefix + ".gate_up_proj", H, [intermediate, intermediate],
                                                       bias, pl, [prefix + ".gate_proj", prefix + ".up_proj"])
        self.down_proj = RowParallelLinear(prefix + ".down_proj", intermediate, H, bias, pl, reduce=reduce)

    def forward(self, ctx, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj.forward(ctx.ops, ctx.ops.silu_and_mul(self.gate_up_proj.forward(ctx.ops, x)))


class DecoderLayer(Module):
    def __init__(self, model: "LlamaForCausalLM", i: int, rotary: RotaryEmbedding):
        p = f"model.layers.{i}"
        self.input_layernorm = RMSNorm(p + ".input_layernorm", model.hidden, model.eps, model.pl)
        self.self_attn = Attention(model, p + ".self_attn", model.layer_window(i), rotary)
        self.post_attention_layernorm = RMSNorm(p + ".post_attention_layernorm", model.hidden, model.eps, model.pl)
        self.mlp = model.build_mlp(i, p + ".mlp")

    def forward(self, ctx, h: torch.Tensor, residual: Optional[torch.Tensor], kv_cache):
        ops = ctx.ops
        if residual is None:
            residual = h
            x = self.input_layernorm.forward(ops, h)
        else:
            x, residual = self.input_layernorm.add_forward(ops, h, residual)
        h = self.self_attn.forward(ctx, x, kv_cache)
        x, residual = self.post_attention_layernorm.add_forward(ops, h, residual)
        return self.mlp.forward(ctx, x), residual

    # short names of the projection weights (a tensor or a QuantizedWeight), read and replaced by the quantized
    # loaders (quant/) and by tests
    @property
    def qkv(self):
        return self.self_attn.qkv_proj.weight

    @qkv.setter
    def qkv(self, w):
        self.self_attn.qkv_proj.weight = w

    @property
    def o(self):
        return self.self_attn.o_proj.weight

    @o.setter
    def o(self, w):
        self.self_attn.o_proj.weight = w

    @property
    def gate_up(self):
        return self.mlp.gate_up_proj.weight

    @gate_up.setter
    def gate_up(self, w):
        self.mlp.gate_up_proj.weight = w

    @property
    def down(self):
        return self.mlp.down_proj.weight

    @down.setter
    def down(self, w):
        self.mlp.down_proj.weight = w


@register("llama")
class LlamaForCausalLM(CausalLM):
    qk_norm = False

    @classmethod
    def supports(cls, cfg) -> tuple[bool, str]:
        if rope_type_of(cfg) not in SUPPORTED_ROPE:
            return False, f"rope type {rope_type_of(cfg)!r} not in the own implementation"
        if getattr(cfg, "hidden_act", "silu") not in ("silu", "swish"):
            return False, f"activation {cfg.hidden_act!r} not in the own implementation"
        if float(getattr(cfg, "partial_rotary_factor", 1.0) or 1.0) != 1.0:
            return False, "partial rotary embeddings not in this family's implementation"
        return True, ""

    @classmethod
    def parallel_refusal(cls, cfg, world_size: int, moe_ep: int = 1) -> Optional[str]:
        """Query heads and the MLP width must divide; kv heads must divide or be divided by the world size (then
        each is replicated on world/kv ranks)."""
        if world_size == 1:
            return None
        if moe_ep < 1 or world_size % moe_ep:
            return f"moe_ep {moe_ep} does not divide worldSize {world_size}"
        heads = cfg.num_attention_heads
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        if heads % world_size or (kv % world_size and world_size % kv):
            return (f"worldSize {world_size} does not divide the model's heads (num_attention_heads {heads}, "
                    f"num_key_value_heads {kv}): use a worldSize that divides num_attention_heads and divides or "
                    f"is a multiple of num_key_value_heads")
        return cls.mlp_parallel_refusal(cfg, world_size, moe_ep)

    @classmethod
    def mlp_parallel_refusal(cls, cfg, world_size: int, moe_ep: int = 1) -> Optional[str]:
        if moe_ep != 1:
            return f"moe_ep {moe_ep}: model_type {cfg.model_type!r} has no experts (use moe_ep 1)"
        if cfg.intermediate_size % world_size:
            return f"worldSize {world_size} does not divide the model's intermediate_size {cfg.intermediate_size}"
        return None

    # ---- family hooks ----------------------------------------------------------------------------------------
    @property
    def qkv_bias(self) -> bool:
        return bool(getattr(self.cfg, "attention_bias", False))

    @property
    def o_bias(self) -> bool:
        return bool(getattr(self.cfg, "attention_bias", False))

    def layer_window(self, i: int) -> Optional[int]:
        return None

    def build_mlp(self, i: int, prefix: str):
        return MLP(self, prefix, self.cfg.intermediate_size, bool(getattr(self.cfg, "mlp_bias", False)))

    def build_decode_stack(self, kv_caches):
        return decode_stack.build(self, kv_caches)

    def run_decode_stack(self, stack, ctx, h):
        return decode_stack.run(self, stack, ctx, h)

    def build_rotary(self) -> RotaryEmbedding:
        return RotaryEmbedding(self.cfg, self.head_dim, self.max_pos, self.device)

    layer_cls = DecoderLayer

    # ---- build -----------------------------------------------------------------------------------------------
    def build(self) -> None:
        cfg, pl = self.cfg, self.pl
        self.hidden = cfg.hidden_size
        self.num_heads_total = cfg.num_attention_heads
        self.num_kv_heads_total = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = float(getattr(cfg, "rms_norm_eps", 1e-6))
        self.scale_value = self.head_dim ** -0.5
        self.max_pos = int(getattr(cfg, "max_position_embeddings", 4096) or 4096)
        tp = self.par.size
        self.num_heads = self.num_heads_total // tp
        self.num_kv_heads = max(1, self.num_kv_heads_total // tp)
        self.q_size, self.kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.inter = getattr(cfg, "intermediate_size", 0) // tp
        rotary = self.build_rotary()
        self.embed_tokens = VocabParallelEmbedding("model.embed_tokens", cfg.vocab_size, self.hidden, pl)
        self.layers = [self.layer_cls(self, i, rotary) for i in range(cfg.num_hidden_layers)]
        self.norm = RMSNorm("model.norm", self.hidden, self.eps, pl)
        tied = bool(getattr(cfg, "tie_word_embeddings", False))
        self.head = ParallelLMHead("lm_head", cfg.vocab_size, self.hidden, pl,
                                   tied_to=self.embed_tokens if tied else None)
