"""DeepSeek V3 / R1 / V3.1 (and Kimi K2, Moonlight: the same architecture) on the paged engine.

Attention is MLA (layers/mla.py: a cache of latent + rope key per token, absorbed weights on decode); the first
`first_k_dense_replace` layers have a dense SiLU MLP, the rest the routed MoE block with shared experts (sigmoid
scores, `e_score_correction_bias`, group-limited top-k, `routed_scaling_factor`). The multi-token-prediction layers
a checkpoint carries after the last layer (`num_nextn_predict_layers`) are never read: no component claims them.
FP8 block-quantized checkpoints are dequantized while they stream in (quant/fp8_block.py).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..layers import ParallelLMHead, RMSNorm, RotaryEmbedding, VocabParallelEmbedding
from ..layers.mla import MLAAttention, MLAConfig
from . import register
from .base import CausalLM
from .llama import MLP, DecoderLayer


def moe_block():
    """The shared fused MoE block (layers/moe.py), None where this build has none."""
    try:
        from ..layers import moe
    except ImportError:
        return None
    return moe


class MLADecoderLayer(DecoderLayer):
    """The llama decoder's pre-norm residual structure with MLA attention and a dense or routed MLP."""

    def __init__(self, model: "DeepseekV3ForCausalLM", i: int, rotary: RotaryEmbedding):
        p = f"model.layers.{i}"
        self.input_layernorm = RMSNorm(p + ".input_layernorm", model.hidden, model.eps, model.pl)
        self.self_attn = MLAAttention(model.mla, p + ".self_attn", model.pl, rotary)
        self.post_attention_layernorm = RMSNorm(p + ".post_attention_layernorm", model.hidden, model.eps, model.pl)
        self.mlp = model.build_mlp(i, p + ".mlp")


@register("deepseek_v3", "kimi_k2")
class DeepseekV3ForCausalLM(CausalLM):
    @classmethod
    def supports(cls, cfg) -> tuple[bool, str]:
        if getattr(cfg, "hidden_act", "silu") not in ("silu", "swish"):
            return False, f"activation {cfg.hidden_act!r} not in the own implementation"
        if cls.first_dense(cfg) < cfg.num_hidden_layers and moe_block() is None:
            return False, "routed-expert layers need the fused MoE block (layers/moe.py), not in this build"
        return True, ""

    @classmethod
    def parallel_refusal(cls, cfg, world_size: int) -> Optional[str]:
        if world_size == 1:
            return None
        if cfg.num_attention_heads % world_size:
            return (f"worldSize {world_size} does not divide num_attention_heads {cfg.num_attention_heads} "
                    f"(MLA splits the heads)")
        if cls.first_dense(cfg) and cfg.intermediate_size % world_size:
            return f"worldSize {world_size} does not divide intermediate_size {cfg.intermediate_size}"
        moe = moe_block()
        if moe is not None and cls.first_dense(cfg) < cfg.num_hidden_layers and hasattr(moe, "parallel_refusal"):
            return moe.parallel_refusal(cfg, world_size)
        return None

    @staticmethod
    def first_dense(cfg) -> int:
        return min(int(getattr(cfg, "first_k_dense_replace", 0) or 0), cfg.num_hidden_layers)

    def build_mlp(self, i: int, prefix: str):
        if i < self.first_dense(self.cfg):
            return MLP(self, prefix, self.cfg.intermediate_size)
        return moe_block().build_moe(self, prefix)

    def build(self) -> None:
        cfg, pl = self.cfg, self.pl
        self.hidden = cfg.hidden_size
        self.eps = float(getattr(cfg, "rms_norm_eps", 1e-6))
        self.max_pos = int(getattr(cfg, "max_position_embeddings", 4096) or 4096)
        self.mla = MLAConfig(cfg, self.par.size)
        self.allow_fused_decode = False         # MLA has its own decode path
        rotary = RotaryEmbedding(cfg, self.mla.rope, min(self.max_pos, 8192), self.device,
                                 is_neox_style=not bool(getattr(cfg, "rope_interleave", True)))
        self.embed_tokens = VocabParallelEmbedding("model.embed_tokens", cfg.vocab_size, self.hidden, pl)
        self.layers = [MLADecoderLayer(self, i, rotary) for i in range(cfg.num_hidden_layers)]
        self.norm = RMSNorm("model.norm", self.hidden, self.eps, pl)
        tied = bool(getattr(cfg, "tie_word_embeddings", False))
        self.head = ParallelLMHead("lm_head", cfg.vocab_size, self.hidden, pl,
                                   tied_to=self.embed_tokens if tied else None)

    def linears(self) -> list:
        """kv_b_proj stays dense (decode reads its halves as the absorbed weights)."""
        return [lin for lin in super().linears() if getattr(lin, "quantizable", True)]

    # ---- KV cache: the latent and the rope key per token, not expanded K/V ---------------------------------
    def kv_bytes_per_block(self, block_size: int) -> int:
        el = torch.tensor([], dtype=self.kv_dtype).element_size()
        return len(self.layers) * block_size * self.mla.cache_values_per_token() * el

    def allocate_kv(self, num_blocks: int, block_size: int) -> list:
        out = []
        for a in self.attention_layers():
            lat, rope = a.kv_cache_shapes(num_blocks, block_size)
            out.append((torch.zeros(lat, dtype=self.kv_dtype, device=self.device),
                        torch.zeros(rope, dtype=self.kv_dtype, device=self.device)))
        return out
