"""The own float32 decode kernels (csrc/decode_attn.cpp) against the plain torch ops they replace: rotary embedding
+ paged KV-cache write + decode attention in one call, and silu(gate) * up; the bf16 form of the attention call
against the float32 one on the same (widened) values."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mindie_like.backend_atb import cpu_kernels
from mindie_like.backend_atb.layers.rotary import build_cos_sin_cache
from mindie_like.backend_atb.ops import TorchOps
from tests.support.native import NATIVE_KERNELS


pytestmark = NATIVE_KERNELS


@pytest.fixture(scope="module")
def ops():
    """The kernels forced on (MINDIE_LIKE_CPU_KERNELS=1), so CPUs with native bf16 test them too."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINDIE_LIKE_CPU_KERNELS", "1")
        if not cpu_kernels.runnable() or cpu_kernels.load() is None:
            pytest.skip("own CPU kernels cannot run here (no AVX2/FMA, or no compiler)")
        ops = TorchOps(torch.device("cpu"), torch.float32)
        assert ops.has_fused_decode_attention(torch.float32) and not ops.has_fused_decode_attention(torch.bfloat16)
        yield ops


class _Cfg:          # what build_cos_sin_cache reads
    rope_theta = 10000.0
    rope_parameters = None


def _paged_case(g, lens, Hq, Hk, D, bs):
    """Caches with random old keys/values, each sequence's blocks scattered over the cache; the new token of
    sequence b is at position lens[b] - 1."""
    B = len(lens)
    nblk = [math.ceil(n / bs) for n in lens]
    total = sum(nblk) + 3
    perm = torch.randperm(total, generator=g).tolist()
    tables = torch.zeros(B, max(nblk), dtype=torch.int32)
    i = 0
    for b, n in enumerate(nblk):
        tables[b, :n] = torch.tensor(perm[i:i + n], dtype=torch.int32)
        i += n
    kc = torch.randn(total, bs, Hk, D, generator=g)
    vc = torch.randn(total, bs, Hk, D, generator=g)
    pos = torch.tensor([n - 1 for n in lens])
    slots = torch.tensor([int(tables[b, p // bs]) * bs + p % bs for b, p in enumerate(pos.tolist())])
    qkv = torch.randn(B, (Hq + 2 * Hk) * D, generator=g) * 2      # the fused projection's output: strided views
    return tables, kc, vc, pos, slots, qkv


@pytest.mark.parametrize("Hq,Hk,D", [(14, 2, 64), (4, 4, 32), (6, 1, 24), (8, 2, 128)])
@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("bs", [4, 16])
def test_rope_attention_decode_matches_torch_ops(ops, Hq, Hk, D, window, bs):
    g = torch.Generator().manual_seed(Hq * 100 + D + bs + (window or 0))
    lens = [1, 7, 40, 17]                       # includes a first token (attends to itself only) and partial blocks
    tables, kc, vc, pos, slots, qkv = _paged_case(g, lens, Hq, Hk, D, bs)
    cos_sin = build_cos_sin_cache(_Cfg(), D, 64)
    B = len(lens)
    q = qkv[:, :Hq * D].view(B, Hq, D)
    k = qkv[:, Hq * D:(Hq + Hk) * D].view(B, Hk, D)
    v = qkv[:, (Hq + Hk) * D:].view(B, Hk, D)
    scale = D ** -0.5
    meta = ops.prepare(query_lens=[1] * B, context_lens=lens, block_tables=tables, slot_mapping=slots, block_size=bs,
                       scale=scale, windows={window})
    kc2, vc2 = kc.clone(), vc.clone()
    out = ops.rope_attention_decode(q, k, v, kc2, vc2, meta, window, cos_sin, pos)

    cos, sin = TorchOps.rope_tables(cos_sin, pos, torch.float32)
    qr, kr = TorchOps.rope(q, k, cos, sin)
    TorchOps.write_kv(kr, v, kc, vc, slots)
    ref = TorchOps.attention_decode(ops, qr, kc, vc, meta, window)
    assert out.shape == (B, Hq * D) and out.dtype == torch.float32
    torch.testing.assert_close(kc2, kc, atol=1e-6, rtol=1e-5)        # the rotated key in its slot, others untouched
    assert torch.equal(vc2, vc)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    assert torch.equal(qkv[:, :Hq * D].view(B, Hq, D), q)            # inputs are not rotated in place


@pytest.mark.parametrize("Hq,Hk,D", [(14, 2, 64), (6, 1, 24)])
@pytest.mark.parametrize("window", [None, 5])
def test_rope_attention_decode_bf16_matches_float32(ops, Hq, Hk, D, window):
    """bf16 q / k / v / caches: float32 math on the widened values, the rotated key rounded once into its slot
    (equal to the float32 kernel's key rounded to bf16), the output within bf16 rounding of the float32 kernel's."""
    mod = cpu_kernels.load()
    g = torch.Generator().manual_seed(Hq + D + (window or 0))
    lens = [1, 7, 40, 17]
    tables, kc, vc, pos, slots, qkv = _paged_case(g, lens, Hq, Hk, D, 4)
    cos_sin = build_cos_sin_cache(_Cfg(), D, 64)
    B, qkv = len(lens), qkv.bfloat16()
    args = {}
    for dt in (torch.bfloat16, torch.float32):
        x = qkv.to(dt)
        q, k, v = x[:, :Hq * D].view(B, Hq, D), x[:, Hq * D:(Hq + Hk) * D].view(B, Hk, D), x[:, (Hq + Hk) * D:].view(B, Hk, D)
        args[dt] = (q, k, v, kc.bfloat16().to(dt), vc.bfloat16().to(dt))
    lens_t = torch.tensor(lens)
    out_b = mod.rope_attention_decode_bf16(*args[torch.bfloat16], cos_sin, pos, slots, tables, lens_t, window or 0,
                                           D ** -0.5)
    out_f = mod.rope_attention_decode_f32(*args[torch.float32], cos_sin, pos, slots, tables, lens_t, window or 0,
                                          D ** -0.5)
    assert out_b.dtype == torch.bfloat16 and out_b.shape == out_f.shape
    assert torch.equal(args[torch.bfloat16][3], args[torch.float32][3].bfloat16())      # keys, rounded once
    assert torch.equal(args[torch.bfloat16][4], args[torch.float32][4].bfloat16())
    torch.testing.assert_close(out_b.float(), out_f, atol=2e-2, rtol=1e-2)
    with pytest.raises(RuntimeError, match="bf16"):
        mod.rope_attention_decode_bf16(*args[torch.float32], cos_sin, pos, slots, tables, lens_t, 0, 0.25)


def test_rope_attention_decode_refuses_bad_input(ops):
    g = torch.Generator().manual_seed(1)
    tables, kc, vc, pos, slots, qkv = _paged_case(g, [3, 5], 4, 2, 16, 4)
    cos_sin = build_cos_sin_cache(_Cfg(), 16, 8)
    q, k, v = qkv[:, :64].view(2, 4, 16), qkv[:, 64:96].view(2, 2, 16), qkv[:, 96:].view(2, 2, 16)
    lens = torch.tensor([3, 5])
    f = ops._f32.rope_attention_decode_f32
    with pytest.raises(RuntimeError, match="outside the rotary table"):
        f(q, k, v, kc, vc, cos_sin, torch.tensor([2, 9]), slots, tables, lens, 0, 0.25)
    with pytest.raises(RuntimeError, match="outside the cache"):
        f(q, k, v, kc, vc, cos_sin, pos, torch.tensor([0, 10_000]), tables, lens, 0, 0.25)
    with pytest.raises(RuntimeError, match="outside the block table"):
        f(q, k, v, kc, vc, cos_sin, pos, slots, tables, torch.tensor([3, 50]), 0, 0.25)
    with pytest.raises(RuntimeError, match="float32"):
        f(q.double(), k, v, kc, vc, cos_sin, pos, slots, tables, lens, 0, 0.25)


@pytest.mark.parametrize("T,I", [(1, 4864), (3, 13), (16, 64)])
def test_silu_mul_matches_torch(ops, T, I):
    g = torch.Generator().manual_seed(T + I)
    x = torch.randn(T, 2 * I, generator=g) * 6
    x[0, :4] = torch.tensor([0.0, -100.0, 100.0, -88.0])    # exp over- and underflow ends
    y = ops.silu_and_mul(x)
    ref = F.silu(x[:, :I].double()) * x[:, I:].double()
    torch.testing.assert_close(y.double(), ref, atol=1e-6, rtol=1e-6)
    xb = x.bfloat16()                                       # other dtypes: plain torch
    assert ops.silu_and_mul(xb).dtype == torch.bfloat16
