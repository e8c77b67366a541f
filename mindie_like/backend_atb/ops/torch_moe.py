"""Plain-torch MoE ops (the reference the NPU table is checked against; used on CPU and CUDA).

    select_experts(logits, spec, correction_bias) -> (weights [T, k] float32, ids [T, k] int64)
        softmax or sigmoid scores, optional `e_score_correction_bias` (added for the choice only), group-limited
        top-k (`n_group` groups ranked by the sum of their top-2 scores, the best `topk_group` kept),
        `norm_topk_prob`, `routed_scaling_factor`
    fused_experts(ops, x, weights, ids, w13, w2, first_expert) -> [T, H]
        the (token, expert) pairs sorted by expert id, one gate/up matmul, SwiGLU and down matmul per active
        expert over exactly its rows (`ops.linear`, so quantized expert weights use their own kernels), scaled by
        the routing weight and summed back per token (index_add). Experts outside [first_expert, first_expert +
        len(w13)) are another rank's (expert parallelism): their pairs are dropped here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class RoutingSpec:
    num_experts: int
    top_k: int
    scoring: str = "softmax"            # "softmax" | "sigmoid"
    norm_topk_prob: bool = False
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    renorm_eps: float = 0.0             # added to the top-k sum before normalizing (DeepSeek: 1e-20)


def select_experts(logits: torch.Tensor, spec: RoutingSpec,
                   correction_bias: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits.float()
    if spec.scoring == "softmax":
        scores = torch.softmax(logits, dim=-1)
    elif spec.scoring == "sigmoid":
        scores = logits.sigmoid()
    else:
        raise ValueError(f"MoE scoring {spec.scoring!r}")
    choice = scores if correction_bias is None else scores + correction_bias.float()
    if spec.n_group > 1:
        T, E = choice.shape
        grouped = choice.view(T, spec.n_group, E // spec.n_group)
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
        keep = torch.topk(group_scores, k=spec.topk_group, dim=-1, sorted=False).indices
        mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
        choice = choice.masked_fill(~mask[:, :, None].expand_as(grouped).reshape(T, E), float("-inf"))
    if correction_bias is None and spec.n_group == 1:
        weights, ids = torch.topk(scores, spec.top_k, dim=-1)
    else:
        ids = torch.topk(choice, spec.top_k, dim=-1, sorted=False).indices
        weights = scores.gather(1, ids)
    if spec.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + spec.renorm_eps)
    if spec.routed_scaling_factor != 1.0:
        weights = weights * spec.routed_scaling_factor
    return weights, ids


def fused_experts(ops, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, w13: list, w2: list,
                  first_expert: int = 0) -> torch.Tensor:
    T, H = x.shape
    k = ids.shape[1]
    n_local = len(w13)
    local = ids.reshape(-1) - first_expert
    pair = torch.arange(T * k, device=x.device)
    inside = (local >= 0) & (local < n_local)
    if not bool(inside.all()):
        local, pair = local[inside], pair[inside]
    out = torch.zeros(T, H, dtype=x.dtype, device=x.device)
    if pair.numel() == 0:
        return out
    local, order = torch.sort(local, stable=True)
    pair = pair[order]
    tokens = pair // k
    counts = torch.bincount(local, minlength=n_local)
    active = torch.nonzero(counts).flatten()
    ends = torch.cumsum(counts, 0)
    xs = x.index_select(0, tokens)
    ys = torch.empty_like(xs)
    for e, end, n in zip(active.tolist(), ends[active].tolist(), counts[active].tolist()):
        seg = xs[end - n:end]
        ys[end - n:end] = ops.linear(ops.silu_and_mul(ops.linear(seg, w13[e])), w2[e])
    ys = ys * weights.reshape(-1)[pair].to(ys.dtype)[:, None]
    return out.index_add_(0, tokens, ys)
