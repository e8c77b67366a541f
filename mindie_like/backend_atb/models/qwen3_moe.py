"""Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B): qwen3's attention with a sparse MoE block (softmax top-k,
`norm_topk_prob`, no shared expert) on the layers `decoder_sparse_step` / `mlp_only_layers` make sparse, a dense
MLP on the others."""
from __future__ import annotations

from typing import Optional

from ..layers.moe import FusedMoE, SharedExpertGate, SparseMoeBlock, TopKRouter
from ..ops.torch_moe import RoutingSpec
from . import register
from .llama import MLP
from .qwen3 import Qwen3ForCausalLM


def is_sparse_layer(cfg, i: int) -> bool:
    return (i not in (getattr(cfg, "mlp_only_layers", None) or []) and cfg.num_experts > 0
            and (i + 1) % cfg.decoder_sparse_step == 0)


def qwen_moe_block(model, prefix: str, shared: bool) -> SparseMoeBlock:
    """The block Qwen2-MoE and Qwen3-MoE share: `mlp.gate` router, `mlp.experts`, and (Qwen2-MoE) the
    `mlp.shared_expert` MLP with its sigmoid `mlp.shared_expert_gate`."""
    cfg, pl = model.cfg, model.pl
    spec = RoutingSpec(num_experts=cfg.num_experts, top_k=cfg.num_experts_per_tok, scoring="softmax",
                       norm_topk_prob=bool(cfg.norm_topk_prob))
    router = TopKRouter(prefix + ".gate", cfg.hidden_size, spec, pl)
    experts = FusedMoE(prefix + ".experts", cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size, pl)
    if not shared:
        return SparseMoeBlock(router, experts, pl)
    mlp = MLP(model, prefix + ".shared_expert", cfg.shared_expert_intermediate_size, reduce=False)
    return SparseMoeBlock(router, experts, pl, mlp, SharedExpertGate(prefix + ".shared_expert_gate",
                                                                    cfg.hidden_size, pl))


def moe_parallel_refusal(cfg, world_size: int, moe_ep: int, shared_intermediate: int = 0) -> Optional[str]:
    """Why the MoE blocks cannot be split: experts over moe_ep slots, each expert's intermediate dimension (and a
    shared expert's, and the dense layers') over the ranks that share a slot / all ranks."""
    moe_tp = world_size // moe_ep
    if cfg.num_experts % moe_ep:
        return f"moe_ep {moe_ep} does not divide the model's num_experts {cfg.num_experts}"
    if cfg.moe_intermediate_size % moe_tp:
        return (f"moe_tp {moe_tp} (worldSize {world_size} / moe_ep {moe_ep}) does not divide the model's "
                f"moe_intermediate_size {cfg.moe_intermediate_size}")
    if shared_intermediate % world_size:
        return (f"worldSize {world_size} does not divide the model's shared_expert_intermediate_size "
                f"{shared_intermediate}")
    dense = [i for i in range(cfg.num_hidden_layers) if not is_sparse_layer(cfg, i)]
    if dense and cfg.intermediate_size % world_size:
        return f"worldSize {world_size} does not divide the model's intermediate_size {cfg.intermediate_size}"
    return None


@register("qwen3_moe")
class Qwen3MoeForCausalLM(Qwen3ForCausalLM):
    def layer_window(self, i: int) -> Optional[int]:
        sw = getattr(self.cfg, "sliding_window", None)
        return int(sw) if sw and getattr(self.cfg, "use_sliding_window", False) else None

    def build_mlp(self, i: int, prefix: str):
        if is_sparse_layer(self.cfg, i):
            return qwen_moe_block(self, prefix, shared=False)
        return MLP(self, prefix, self.cfg.intermediate_size)

    @classmethod
    def mlp_parallel_refusal(cls, cfg, world_size: int, moe_ep: int = 1) -> Optional[str]:
        return moe_parallel_refusal(cfg, world_size, moe_ep)
