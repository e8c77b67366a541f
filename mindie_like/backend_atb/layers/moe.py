"""The fused MoE block: a router, the routed experts (computed only for the tokens routed to them), and optional
shared experts with an optional sigmoid gate.

Routing (`RoutingSpec`, ops.torch_moe.select_experts): softmax or sigmoid scores, `e_score_correction_bias`,
group-limited top-k (`n_group` / `topk_group`), `norm_topk_prob`, `routed_scaling_factor` — the knobs of Qwen-MoE,
DeepSeek V3 and GLM-4.5. Experts: the op table's `moe_experts` sorts the (token, expert) pairs by expert id and
runs one gate/up + SwiGLU + down per active expert over exactly its tokens (a grouped matmul on NPU), summing
back with the routing weights.

Each expert's gate/up and down are `ExpertLinear`s (layers/linear.py's LinearBase), views into one stacked
tensor per kind, so weight-only quantization replaces them like any other linear.

Parallelism over the world of `size` ranks, `moe_ep` x `moe_tp` = size (ParallelSpec): rank r holds the experts
of its expert-parallel slot (r // moe_tp; all of them when moe_ep is 1) and, of each, its moe_tp slice of the
intermediate dimension (r % moe_tp; all of it when moe_tp is 1). Attention is tensor-parallel, so every rank has
every token's hidden state: each computes its experts' partial sums for the tokens routed to them, and one
all-reduce per block (shared expert included) combines them — expert-TP, expert parallelism and both at once.

Checkpoint layouts: one tensor per expert (`mlp.experts.E.gate_proj.weight` ..., the hub's and what
transformers' save_pretrained writes) or transformers' fused in-memory layout (`mlp.experts.gate_up_proj`
[E, 2I, H], `mlp.experts.down_proj` [E, H, I], written by save_pretrained(save_original_format=False)). Either
way a rank reads only its experts and its slices.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..ops.torch_moe import RoutingSpec
from .component import Component, Module, MultiSlice, Placement, ShardSpec, copy_into
from .distributed import ParallelSpec, all_reduce
from .linear import LinearBase


class ExpertLinear(LinearBase):
    """One expert's gate/up (`kind` "w13", sources gate_proj and up_proj) or down ("w2") projection; `weight` a
    view into the block's stacked tensor until quantization replaces it."""

    def __init__(self, prefix: str, weight: torch.Tensor, pl: Placement, kind: str, moe_tp: tuple[int, int]):
        self.prefix, self.pl, self.kind = prefix, pl, kind
        self.out_features, self.in_features = weight.shape
        self.weight, self.bias = weight, None
        self.rows_loaded = 0
        self.tp_rank, self.tp_size = moe_tp
        if kind == "w13":
            self.sources = [(prefix + ".gate_proj", 0), (prefix + ".up_proj", 1)]
        else:
            self.sources = [(prefix + ".down_proj", None)]

    def part_rows(self, shard_id) -> tuple[int, int]:
        if self.kind == "w13":
            half = self.out_features // 2
            return shard_id * half, half
        return 0, self.out_features

    def shard_spec(self, leaf: str, shard_id=None) -> ShardSpec:
        if self.tp_size == 1:
            return None
        if self.kind == "w13":
            n = self.out_features // 2
            return 0, self.tp_rank * n, n
        return 1, self.tp_rank * self.in_features, self.in_features


def expert_layout(par: ParallelSpec, num_experts: int, intermediate: int) -> tuple[int, int, int, int]:
    """(first expert, local experts, moe_tp rank, moe_tp size) of this rank."""
    moe_ep = max(1, par.moe_ep)
    moe_tp = par.size // moe_ep
    per = num_experts // moe_ep
    return (par.rank // moe_tp) * per, per, par.rank % moe_tp, moe_tp


class FusedMoE(Component):
    """The routed experts of one layer (`prefix` = `...mlp.experts`)."""

    def __init__(self, prefix: str, num_experts: int, hidden: int, intermediate: int, pl: Placement):
        self.prefix, self.pl = prefix, pl
        self.num_experts = num_experts
        self.first, self.n_local, tp_rank, tp_size = expert_layout(pl.par, num_experts, intermediate)
        self.i_total, self.i_local = intermediate, intermediate // tp_size
        self.tp = (tp_rank, tp_size)
        w13 = pl.linear_weight(self.n_local, 2 * self.i_local, hidden)
        w2 = pl.linear_weight(self.n_local, hidden, self.i_local)
        self.w13 = [ExpertLinear(f"{prefix}.{self.first + e}", w13[e], pl, "w13", self.tp)
                    for e in range(self.n_local)]
        self.w2 = [ExpertLinear(f"{prefix}.{self.first + e}", w2[e], pl, "w2", self.tp)
                   for e in range(self.n_local)]
        self.npu_weights = None         # NpuOps.prepare_weights: stacked, transposed weights for grouped matmul

    # the fused layout: optional, covers the per-expert names when present
    def optional_leaves(self) -> list[str]:
        return ["gate_up_proj", "down_proj"]

    def shard_spec(self, leaf: str, shard_id=None) -> ShardSpec:
        e = slice(self.first, self.first + self.n_local)
        tp_rank, tp_size = self.tp
        if leaf == "down_proj":              # [E, H, I]
            return MultiSlice([(e, slice(None), slice(tp_rank * self.i_local, (tp_rank + 1) * self.i_local))])
        lo = tp_rank * self.i_local           # gate_up_proj [E, 2I, H]: this rank's rows of the gate and the up half
        return MultiSlice([(e, slice(lo, lo + self.i_local)),
                           (e, slice(self.i_total + lo, self.i_total + lo + self.i_local))], cat_dim=1)

    def load(self, leaf: str, tensor: torch.Tensor, shard_id=None) -> list[str]:
        experts = self.w2 if leaf == "down_proj" else self.w13
        for e, lin in enumerate(experts):
            lin.fill_rows(0, lin.out_features, tensor[e], f"{self.prefix}.{leaf}[{self.first + e}]")
        return [f"{src}.weight" for lin in experts for src, _ in lin.source_prefixes()]

    def forward(self, ops, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Partial sums of this rank's experts (the caller all-reduces)."""
        return ops.moe_experts(x, weights, ids, self)

    def expert_weights(self) -> tuple[list, list]:
        return [lin.weight for lin in self.w13], [lin.weight for lin in self.w2]


class TopKRouter(Component):
    """`weight` [E, H] (kept in the activation dtype, never quantized) and, for DeepSeek-style routing,
    `e_score_correction_bias` [E] (float32)."""

    def __init__(self, prefix: str, hidden: int, spec: RoutingSpec, pl: Placement, correction_bias: bool = False):
        self.prefix, self.spec = prefix, spec
        self.weight = pl.small(spec.num_experts, hidden)
        self.e_score_correction_bias = torch.zeros(spec.num_experts, dtype=torch.float32, device=pl.device) \
            if correction_bias else None

    def leaves(self) -> list[str]:
        return ["weight"] + (["e_score_correction_bias"] if self.e_score_correction_bias is not None else [])

    def tensors(self) -> list:
        return [t for t in (self.weight, self.e_score_correction_bias) if t is not None]

    def load(self, leaf: str, tensor: torch.Tensor, shard_id=None) -> None:
        copy_into(getattr(self, leaf), tensor, f"{self.prefix}.{leaf}")

    def forward(self, ops, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = ops.linear(x, self.weight)
        return ops.moe_select(logits, self.spec, self.e_score_correction_bias)


class SharedExpertGate(Component):
    """Qwen2-MoE's `shared_expert_gate`: sigmoid(x @ w.T) [T, 1] scales the shared expert's output."""

    def __init__(self, prefix: str, hidden: int, pl: Placement):
        self.prefix = prefix
        self.weight = pl.small(1, hidden)

    def leaves(self) -> list[str]:
        return ["weight"]

    def tensors(self) -> list:
        return [self.weight]

    def load(self, leaf: str, tensor: torch.Tensor, shard_id=None) -> None:
        copy_into(self.weight, tensor, f"{self.prefix}.{leaf}")

    def forward(self, ops, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(ops.linear(x, self.weight))


class SparseMoeBlock(Module):
    """router -> routed experts (+ shared expert, gated or not) -> one all-reduce. `shared`: an MLP built with
    `reduce=False` (its partial sums join the experts' before the one all-reduce)."""

    def __init__(self, router: TopKRouter, experts: FusedMoE, pl: Placement, shared=None,
                 shared_gate: Optional[SharedExpertGate] = None):
        self.gate, self.experts, self.shared, self.shared_gate = router, experts, shared, shared_gate
        self.pl = pl

    def forward(self, ctx, x: torch.Tensor) -> torch.Tensor:
        ops = ctx.ops
        weights, ids = self.gate.forward(ops, x)
        y = self.experts.forward(ops, x, weights, ids)
        if self.shared is not None:
            s = self.shared.forward(ctx, x)
            if self.shared_gate is not None:
                s = s * self.shared_gate.forward(ops, x)
            y = y + s
        if self.pl.par.size > 1:
            y = all_reduce(y, self.pl.par)
        return y
