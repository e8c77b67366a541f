"""The NPU path against a fake torch_npu injected in sys.modules: argument names, shapes and dtypes as documented
(hiascend.com torch_npu.npu_weight_quant_batchmatmul / npu_convert_weight_to_int4pack), and the numbers."""
from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from mindie_like.backend_atb.quant import (Int4Weight, Int8Weight, dequantize_int4, dequantize_int8,
                                           quantize_int4_grouped, quantize_int8_per_channel)


def _unpack_int32_int4(p: torch.Tensor) -> torch.Tensor:
    shifts = torch.arange(8, dtype=torch.int32) * 4
    nib = (p[..., None] >> shifts) & 0xF
    nib = torch.where(nib >= 8, nib - 16, nib)               # signed int4
    return nib.reshape(*p.shape[:-1], p.shape[-1] * 8)


def make_fake_torch_npu(calls: list):
    m = types.ModuleType("torch_npu")

    def npu_convert_weight_to_int4pack(weight, inner_k_tiles=0):
        assert weight.dtype == torch.int32 and weight.dim() == 2 and weight.is_contiguous()
        assert weight.shape[-1] % 8 == 0, "last dim must be 8-aligned"
        assert int(weight.min()) >= -8 and int(weight.max()) <= 7, "values must be int4 [-8, 7]"
        shifts = torch.arange(8, dtype=torch.int32) * 4
        w = (weight & 0xF).reshape(weight.shape[0], -1, 8)
        packed = (w << shifts).sum(-1, dtype=torch.int64)
        packed = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)
        calls.append(("convert", tuple(weight.shape)))
        return packed

    def npu_weight_quant_batchmatmul(x, weight, antiquant_scale, antiquant_offset=None, quant_scale=None,
                                     quant_offset=None, bias=None, antiquant_group_size=0, inner_precise=0):
        assert x.dim() == 2 and x.dtype in (torch.float16, torch.bfloat16)
        M, K = x.shape
        if weight.dtype == torch.int8:
            w = weight.to(torch.float32)                         # (K, N), may be a transposed view
        elif weight.dtype == torch.int32:
            w = _unpack_int32_int4(weight).to(torch.float32)
        else:
            raise AssertionError(f"weight dtype {weight.dtype}")
        assert w.shape[0] == K, f"weight must be (K, N): got {tuple(w.shape)} for K={K}"
        N = w.shape[1]
        assert antiquant_scale.dtype == x.dtype, "antiquant_scale dtype must match x"
        if antiquant_group_size:
            assert antiquant_group_size % 32 == 0 and K % antiquant_group_size == 0
            G = -(-K // antiquant_group_size)
            assert tuple(antiquant_scale.shape) == (G, N)
            scale = antiquant_scale.float().repeat_interleave(antiquant_group_size, 0)
        else:
            assert tuple(antiquant_scale.shape) in ((N,), (1, N))
            scale = antiquant_scale.float().reshape(1, N)
        off = 0.0
        if antiquant_offset is not None:
            assert antiquant_offset.dtype == antiquant_scale.dtype
            assert antiquant_offset.shape == antiquant_scale.shape
            off = antiquant_offset.float()
            off = off.repeat_interleave(antiquant_group_size, 0) if antiquant_group_size else off.reshape(1, N)
        assert quant_scale is None and quant_offset is None
        calls.append(("wqbmm", M, K, N, weight.dtype, antiquant_group_size))
        y = x.float() @ ((w + off) * scale)
        if bias is not None:
            y = y + bias.float()
        return y.to(x.dtype)

    m.npu_convert_weight_to_int4pack = npu_convert_weight_to_int4pack
    m.npu_weight_quant_batchmatmul = npu_weight_quant_batchmatmul
    return m


@pytest.fixture
def fake_npu(monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "torch_npu", make_fake_torch_npu(calls))
    return calls


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("N,K", [(7, 24), (96, 896), (50, 104)])
def test_npu_int8(fake_npu, dtype, N, K):
    torch.manual_seed(N + K)
    q, s = quantize_int8_per_channel(torch.randn(N, K), dtype)
    qw = Int8Weight(q, s, dtype=dtype, backend="npu")
    assert qw.kernel == "torch_npu.npu_weight_quant_batchmatmul"
    x = torch.randn(3, K, dtype=dtype)
    y = qw.linear(x)
    ref = F.linear(x.float(), dequantize_int8(q, s))
    assert y.shape == (3, N) and y.dtype == dtype
    assert ((y.float() - ref).abs().max() / ref.abs().max()) < 1e-2
    assert fake_npu[-1] == ("wqbmm", 3, K, N, torch.int8, 0)


@pytest.mark.parametrize("gs", [32, 64, 128])
@pytest.mark.parametrize("N", [16, 50, 3])
def test_npu_int4(fake_npu, gs, N):
    dtype = torch.bfloat16
    K = {32: 96, 64: 320, 128: 384}[gs]
    torch.manual_seed(gs + N)
    q, s, z = quantize_int4_grouped(torch.randn(N, K), gs, dtype)
    qw = Int4Weight(q, s, z, gs, dtype=dtype, backend="npu")
    Np = -(-N // 8) * 8
    assert fake_npu[0] == ("convert", (K, Np))
    x = torch.randn(5, K, dtype=dtype)
    y = qw.linear(x)
    assert y.shape == (5, N) and y.dtype == dtype
    ref = F.linear(x.float(), dequantize_int4(q, s, z, gs))
    # offset = zero / scale is rounded to bf16 once more than the CPU/CUDA form: a slightly wider tolerance
    assert ((y.float() - ref).abs().max() / ref.abs().max()) < 2e-2
    assert fake_npu[-1] == ("wqbmm", 5, K, Np, torch.int32, gs)


def test_npu_refuses_float32(fake_npu):
    q, s = quantize_int8_per_channel(torch.randn(8, 32))
    with pytest.raises(ValueError, match="float16/bfloat16"):
        Int8Weight(q, s, dtype=torch.float32, backend="npu")


def test_npu_int8_with_offset(fake_npu):
    """A pre-quantized msmodelslim W8A16 weight with per-channel offsets: w = (q - offset) * scale; the NPU op gets
    antiquant_offset = -offset (it computes (w + offset) * scale)."""
    dtype = torch.bfloat16
    torch.manual_seed(3)
    q = torch.randint(-128, 128, (24, 64), dtype=torch.int8)
    s = torch.rand(24) * 0.01 + 0.001
    o = torch.randint(-20, 21, (24,)).float()
    qw = Int8Weight(q, s, dtype=dtype, backend="npu", offset=o)
    x = torch.randn(4, 64, dtype=dtype)
    y = qw.linear(x)
    ref = F.linear(x.float(), (q.float() - o[:, None]) * s.to(dtype).float()[:, None])
    assert ((y.float() - ref).abs().max() / ref.abs().max()) < 1e-2
    assert fake_npu[-1] == ("wqbmm", 4, 64, 24, torch.int8, 0)
