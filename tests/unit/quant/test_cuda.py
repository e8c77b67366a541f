"""The CUDA path against its dequantized reference (skipped without a CUDA device)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mindie_like.backend_atb.quant import (Int4Weight, Int8Weight, dequantize_int4, dequantize_int8,
                                           quantize_int4_grouped, quantize_int8_per_channel)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _rel(y, ref):
    return float((y.float() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("N,K", [(7, 24), (96, 896), (50, 104), (1152, 896)])
def test_cuda_int8(dtype, N, K):
    torch.manual_seed(N + K)
    q, s = quantize_int8_per_channel(torch.randn(N, K), dtype)
    qw = Int8Weight(q, s, dtype=dtype, device="cuda")
    assert qw.backend == "cuda"
    ref_w = dequantize_int8(q, s).cuda()
    for M in (1, 5, 64):
        x = torch.randn(M, K, dtype=dtype, device="cuda")
        y = qw.linear(x)
        assert y.shape == (M, N) and y.dtype == dtype and y.device.type == "cuda"
        assert _rel(y, F.linear(x.float(), ref_w)) < 1e-2, qw.kernel


@pytest.mark.parametrize("gs", [32, 64, 128, 256])
@pytest.mark.parametrize("N", [16, 50, 136, 7, 4864])
def test_cuda_int4(gs, N):
    K = {32: 96, 64: 320, 128: 896, 256: 768}[gs]
    torch.manual_seed(gs + N)
    q, s, z = quantize_int4_grouped(torch.randn(N, K), gs, torch.bfloat16)
    qw = Int4Weight(q, s, z, gs, dtype=torch.bfloat16, device="cuda")
    assert qw.kernel == "aten._weight_int4pack_mm"
    ref_w = dequantize_int4(q, s, z, gs).cuda()
    for M in (1, 5, 64):
        x = torch.randn(M, K, dtype=torch.bfloat16, device="cuda")
        y = qw.linear(x)
        assert y.shape == (M, N) and y.dtype == torch.bfloat16
        assert _rel(y, F.linear(x.float(), ref_w)) < 1e-2
    assert torch.equal(qw.dequantize(torch.float32), ref_w.to(torch.bfloat16).float())


def test_cuda_int4_float16_falls_back_to_dequantize():
    q, s, z = quantize_int4_grouped(torch.randn(32, 64), 32, torch.float16)
    qw = Int4Weight(q, s, z, 32, dtype=torch.float16, device="cuda")
    assert qw.kernel == "dequant-matmul"
    x = torch.randn(3, 64, dtype=torch.float16, device="cuda")
    assert _rel(qw.linear(x), F.linear(x.float(), dequantize_int4(q, s, z, 32).cuda())) < 1e-2


def test_cuda_embedding_rows():
    w = torch.randn(100, 64)
    for scheme_w in (Int8Weight.from_float(w, dtype=torch.bfloat16, device="cuda"),
                     Int4Weight.from_float(w, 32, dtype=torch.bfloat16, device="cuda", keep_rows=True)):
        ids = torch.tensor([1, 99, 3], device="cuda")
        rows = F.embedding(ids, scheme_w)
        assert rows.device.type == "cuda"
        assert torch.equal(rows, scheme_w.dequantize(torch.bfloat16)[ids])
