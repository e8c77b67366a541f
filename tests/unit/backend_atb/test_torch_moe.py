"""The plain-torch routed experts (ops/torch_moe.fused_experts) against a per-token reference: every expert
local or half of them (expert parallelism), one token or many, the experts run on one thread or split over two."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mindie_like.backend_atb.layers import ParallelSpec, Placement
from mindie_like.backend_atb.layers.moe import FusedMoE
from mindie_like.backend_atb.ops import TorchOps
from mindie_like.backend_atb.ops import torch_moe


def _layer(first: int, n_local: int, g) -> FusedMoE:
    par = ParallelSpec(rank=first // n_local, size=8 // n_local, moe_ep=8 // n_local)
    layer = FusedMoE("m.experts", 8, 16, 12, Placement(torch.float32, torch.float32, torch.device("cpu"), par))
    for a, b in zip(layer.w13, layer.w2):
        a.weight.copy_(torch.randn(a.weight.shape, generator=g) * 0.3)
        b.weight.copy_(torch.randn(b.weight.shape, generator=g) * 0.3)
    return layer


def _reference(x, weights, ids, layer) -> torch.Tensor:
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for w, e in zip(weights[t].tolist(), ids[t].tolist()):
            if layer.first <= e < layer.first + layer.n_local:
                gate_up = layer.w13[e - layer.first].weight @ x[t]
                gate, up = gate_up.chunk(2)
                out[t] += w * (layer.w2[e - layer.first].weight @ (F.silu(gate) * up))
    return out


@pytest.mark.parametrize("first,n_local", [(0, 8), (4, 4)])
@pytest.mark.parametrize("tokens", [1, 24])
def test_fused_experts_match_per_token_reference(first, n_local, tokens):
    g = torch.Generator().manual_seed(3)
    layer = _layer(first, n_local, g)
    x = torch.randn(tokens, 16, generator=g)
    weights = torch.rand(tokens, 2, generator=g)
    ids = torch.stack([torch.randperm(8, generator=g)[:2] for _ in range(tokens)])
    ref = _reference(x, weights, ids, layer)
    ops = TorchOps()
    w13, w2 = layer.expert_weights()
    one = torch_moe.fused_experts(ops, x, weights, ids, w13, w2, layer.first, workers=1)
    torch.testing.assert_close(one, ref, atol=1e-5, rtol=1e-5)
    split = torch_moe.fused_experts(ops, x, weights, ids, w13, w2, layer.first, workers=2)
    # the same matmuls on two threads; a matmul's own intra-op split (which depends on the torch thread count the
    # process set) may order a sum differently, so equal up to float rounding, not bit for bit
    torch.testing.assert_close(split, one, atol=1e-6, rtol=1e-6)
    if tokens * 2 >= torch_moe.MIN_PAIRS_PER_THREAD * 2:
        assert torch_moe._POOL is not None  # the split really ran


def test_no_local_pairs_give_zeros():
    g = torch.Generator().manual_seed(4)
    layer = _layer(4, 4, g)
    x = torch.randn(3, 16, generator=g)
    ids = torch.tensor([[0, 1], [2, 3], [1, 2]])         # all another rank's experts
    w13, w2 = layer.expert_weights()
    out = torch_moe.fused_experts(TorchOps(), x, torch.rand(3, 2, generator=g), ids, w13, w2, layer.first)
    assert torch.equal(out, torch.zeros_like(x))
