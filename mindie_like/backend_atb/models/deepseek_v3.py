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
from ..layers.moe import FusedMoE, SparseMoeBlock, TopKRouter
from ..ops.torch_moe import RoutingSpec
from . import decode_stack, register
from .base import CausalLM
from .llama import MLP, DecoderLayer


def first_dense(cfg) -> int:
    """Layers [0, first_k_dense_replace) have a dense MLP, the rest routed experts."""
    return min(int(getattr(cfg, "first_k_dense_replace", 0) or 0), cfg.num_hidden_layers)


def sigmoid_moe_block(model, prefix: str) -> SparseMoeBlock:
    """DeepSeek V3's MoE (GLM-4.5's too): sigmoid scores, `e_score_correction_bias` for the choice, group-limited
    top-k, `norm_topk_prob` (+1e-20), `routed_scaling_factor`, `n_shared_experts` shared experts as one MLP."""
    cfg, pl = model.cfg, model.pl
    spec = RoutingSpec(num_experts=cfg.n_routed_experts, top_k=cfg.num_experts_per_tok, scoring="sigmoid",
                       norm_topk_prob=bool(cfg.norm_topk_prob), n_group=int(cfg.n_group or 1),
                       topk_group=int(cfg.topk_group or 1), routed_scaling_factor=float(cfg.routed_scaling_factor),
                       renorm_eps=1e-20)
    router = TopKRouter(prefix + ".gate", cfg.hidden_size, spec, pl, correction_bias=True)
    experts = FusedMoE(prefix + ".experts", cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size, pl)
    n_shared = int(getattr(cfg, "n_shared_experts", 0) or 0)
    shared = MLP(model, prefix + ".shared_experts", cfg.moe_intermediate_size * n_shared, reduce=False) \
        if n_shared else None
    return SparseMoeBlock(router, experts, pl, shared)


def sigmoid_moe_parallel_refusal(cfg, world_size: int, moe_ep: int) -> Optional[str]:
    """The experts over moe_ep slots, each expert's intermediate dimension over moe_tp = world / moe_ep ranks,
    the shared experts' and the dense layers' over every rank."""
    if moe_ep < 1 or world_size % moe_ep:
        return f"moe_ep {moe_ep} does not divide worldSize {world_size}"
    moe_tp = world_size // moe_ep
    if cfg.n_routed_experts % moe_ep:
        return f"moe_ep {moe_ep} does not divide the model's n_routed_experts {cfg.n_routed_experts}"
    if cfg.moe_intermediate_size % moe_tp:
        return (f"moe_tp {moe_tp} (worldSize {world_size} / moe_ep {moe_ep}) does not divide the model's "
                f"moe_intermediate_size {cfg.moe_intermediate_size}")
    shared = cfg.moe_intermediate_size * int(getattr(cfg, "n_shared_experts", 0) or 0)
    if shared % world_size:
        return f"worldSize {world_size} does not divide the shared experts' intermediate size {shared}"
    if first_dense(cfg) and cfg.intermediate_size % world_size:
        return f"worldSize {world_size} does not divide the model's intermediate_size {cfg.intermediate_size}"
    return None


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
        return True, ""

    @classmethod
    def parallel_refusal(cls, cfg, world_size: int, moe_ep: int = 1) -> Optional[str]:
        if cfg.num_attention_heads % world_size:
            return (f"worldSize {world_size} does not divide num_attention_heads {cfg.num_attention_heads} "
                    f"(MLA splits the heads)")
        return sigmoid_moe_parallel_refusal(cfg, world_size, moe_ep)

    def build_mlp(self, i: int, prefix: str):
        if i < first_dense(self.cfg):
            return MLP(self, prefix, self.cfg.intermediate_size)
        return sigmoid_moe_block(self, prefix)

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

    def build_decode_stack(self, kv_caches):
        return decode_stack.build(self, kv_caches)

    def run_decode_stack(self, stack, ctx, h):
        return decode_stack.run(self, stack, ctx, h)

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
