"""Plain-torch MoE ops (the reference the NPU table is checked against; used on CPU and CUDA).

    select_experts(logits, spec, correction_bias) -> (weights [T, k] float32, ids [T, k] int64)
        softmax or sigmoid scores, optional `e_score_correction_bias` (added for the choice only), group-limited
        top-k (`n_group` groups ranked by the sum of their top-2 scores, the best `topk_group` kept),
        `norm_topk_prob`, `routed_scaling_factor`
    fused_experts(ops, x, weights, ids, w13, w2, first_expert) -> [T, H]
        the (token, expert) pairs sorted by expert id, one gate/up matmul, SwiGLU and down matmul per active
        expert over exactly its rows (`ops.linear`, so quantized expert weights use their own kernels), scaled by
        the routing weight and summed back per token (the outputs put back in (token, slot) order, one batched
        matmul with the weights: index_add into few rows is very slow on CPU). Experts outside [first_expert, first_expert +
        len(w13)) are another rank's (expert parallelism): their pairs are dropped here.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import torch

from ...cpu_threads import run_single_threaded


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
                  first_expert: int = 0, workers: int = 1) -> torch.Tensor:
    T, H = x.shape
    k = ids.shape[1]
    n_local = len(w13)
    local = ids.reshape(-1)
    if first_expert:
        local = local - first_expert
    # one sort of the (token, expert) pairs; pairs of another rank's experts sort past the local ones
    foreign = (local < 0) | (local >= n_local)
    some_foreign = bool(foreign.any())
    if some_foreign:
        local = local.masked_fill(foreign, n_local)
    local, pair = torch.sort(local, stable=True)
    counts = torch.bincount(local, minlength=n_local + 1).tolist()      # the step's one host sync
    n_pairs = T * k - counts[n_local]
    if n_pairs == 0:
        return x.new_zeros(T, H)
    pair = pair[:n_pairs]
    xs = x.index_select(0, pair // k)
    ys = torch.empty_like(xs)
    segments, end = [], 0
    for e in range(n_local):        # empty experts cost one comparison
        n = counts[e]
        if n:
            segments.append((e, end, n))
            end += n

    def run(part):
        for e, start, n in part:
            seg = xs[start:start + n]
            ys[start:start + n] = ops.linear(ops.silu_and_mul(ops.linear(seg, w13[e])), w2[e])
    if workers > 1 and n_pairs >= MIN_PAIRS_PER_THREAD * workers:
        _run_split(run, segments, workers)
    else:
        run(segments)
    # back to (token, slot) order, then each token's k outputs weighted and summed in one batched matmul
    # (index_add into few rows with repeated indices is slow on CPU)
    per_pair = x.new_zeros(T * k, H) if some_foreign else torch.empty(T * k, H, dtype=x.dtype, device=x.device)
    per_pair.index_copy_(0, pair, ys)
    return torch.bmm(weights.to(x.dtype).view(T, 1, k), per_pair.view(T, k, H)).view(T, H)


_POOL: Optional[ThreadPoolExecutor] = None
# below this many (token, expert) pairs per thread, handing experts to another thread costs more than it saves
# (a single-stream decode step of a top-8 model runs its experts on one thread)
MIN_PAIRS_PER_THREAD = 8


def _run_split(run, segments: list, workers: int) -> None:
    """The active experts split into `workers` shares of about equal rows, one per thread (this one and pool
    threads). On CPU a decode step's experts get a few rows each, and one small matmul cannot keep two cores
    busy (its fork/join costs about what its work does): several experts at once, each matmul on its own
    thread, can. Each share writes its own rows of the output."""
    global _POOL
    if _POOL is None or _POOL._max_workers < workers - 1:
        # each pool thread runs its matmuls alone: a thread that started an OpenMP team of its own would stop the
        # engine's team spinning between parallel regions for good (cpu_threads.release_openmp_pool)
        _POOL = ThreadPoolExecutor(max_workers=workers - 1, thread_name_prefix="moe-experts",
                                   initializer=run_single_threaded)
    shares: list[list] = [[] for _ in range(workers)]
    rows = [0] * workers
    for seg in sorted(segments, key=lambda s: -s[2]):       # largest first onto the least loaded share
        i = rows.index(min(rows))
        shares[i].append(seg)
        rows[i] += seg[2]
    inference = torch.is_inference_mode_enabled()

    def in_mode(part):
        with torch.inference_mode(inference):
            run(part)
    futures = [_POOL.submit(in_mode, part) for part in shares[1:] if part]
    run(shares[0])
    for f in futures:
        f.result()
