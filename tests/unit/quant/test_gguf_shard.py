"""quant/gguf_shard.py: a rank's part of a GGUF tensor in block form equals the same part of the dense values;
input columns split only on block boundaries; a short vocabulary shard is padded with zero rows."""
from __future__ import annotations

import pytest
import torch

from mindie_like.backend_atb.quant.gguf import Blocks, Parts
from mindie_like.backend_atb.quant.gguf_shard import shard


def _dense(p):
    if isinstance(p, Blocks):
        w = p.q.float().reshape(p.q.shape[0], -1, p.group) * p.scale[..., None]
        if p.zero is not None:
            w = w + p.zero[..., None]
        return w.reshape(p.q.shape)
    return p.float()


@pytest.mark.parametrize("zero", [False, True])
def test_block_shards_equal_dense_slices(zero):
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-16, 16, (6, 64), generator=g).to(torch.int8)
    s = torch.rand(6, 4, generator=g)
    p = Blocks("t", "Q6_K", q, s, torch.rand(6, 4, generator=g) if zero else None, 16)
    w = _dense(p)
    assert torch.equal(_dense(shard(p, (0, 2, 3))), w[2:5])
    assert torch.equal(_dense(shard(p, (1, 32, 32))), w[:, 32:])
    with pytest.raises(ValueError, match="block boundaries"):
        shard(p, (1, 8, 32))
    padded = _dense(shard(p, (0, 4, 2), rows=5))
    assert torch.equal(padded[:2], w[4:6]) and not padded[2:].any()


def test_int4_and_float_parts():
    g = torch.Generator().manual_seed(1)
    p4 = Parts("t", "Q4_0", torch.randint(0, 16, (4, 64), generator=g).to(torch.uint8), torch.rand(4, 2, generator=g),
               torch.rand(4, 2, generator=g))
    assert torch.equal(shard(p4, (1, 32, 32)).float(), p4.float()[:, 32:])
    assert not shard(p4, (0, 3, 1), rows=3).float()[1:].any()
    pf = Parts("t", "F32", w=torch.randn(4, 8, generator=g))
    assert torch.equal(shard(pf, (0, 1, 2)).float(), pf.float()[1:3]) and shard(pf, None) is pf
