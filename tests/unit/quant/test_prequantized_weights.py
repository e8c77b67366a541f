"""The two weight forms pre-quantized checkpoints need beyond round-to-nearest ones: an int8 weight with
per-channel offsets (msmodelslim W8A16, asymmetric) and an int4 weight with permuted input channels (GPTQ
act-order), against their dequantized references on every CPU kernel."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mindie_like.backend_atb.quant import InputPermutedWeight, Int4Weight, Int8Weight, quantize_int4_grouped
from mindie_like.backend_atb.quant.policy import QuantPolicy
from tests.support.native import NATIVE_KERNELS

TOL = {torch.float32: 2e-5, torch.bfloat16: 8e-3}
TOL_INT4 = 2e-4          # the own int4 kernel's 16-bit fixed-point activations (test_quant_linear.py)


pytestmark = NATIVE_KERNELS


@pytest.fixture(params=["own", "torch", "reference"])
def backend(request, monkeypatch):
    """Own kernels forced on (any AVX2 CPU), forced off (torch's), and the dequantize reference."""
    from mindie_like.backend_atb import cpu_kernels
    if request.param == "own":
        monkeypatch.setenv("MINDIE_LIKE_CPU_KERNELS", "1")
        if cpu_kernels.load() is None:
            pytest.skip("own CPU kernels cannot run here (no AVX2/FMA, or no compiler)")
    if request.param == "torch":
        monkeypatch.setenv("MINDIE_LIKE_CPU_KERNELS", "0")
    return "reference" if request.param == "reference" else "cpu"


def _rel(y, ref):
    return float((y.float() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_offset_is_exact_on_every_kernel(backend, dtype):
    torch.manual_seed(1)
    N, K = 40, 96
    q = torch.randint(-128, 128, (N, K), dtype=torch.int8)
    s = (torch.rand(N) * 0.01 + 0.001).to(dtype)
    o = torch.randint(-30, 31, (N,)).float()
    qw = Int8Weight(q, s, dtype=dtype, backend=backend, offset=o)
    w = (q.float() - o[:, None]) * s.float()[:, None]              # msmodelslim: w = (q - offset) * scale
    torch.testing.assert_close(qw.dequantize(torch.float32), w, atol=0, rtol=0)
    b = torch.randn(N, dtype=dtype)
    for M in (1, 5):
        x = torch.randn(M, K, dtype=dtype)
        ref = F.linear(x.float(), w) + b.float()
        assert _rel(qw.linear(x, b), ref) < TOL[dtype], qw.kernel
    ids = torch.tensor([[0, 7], [39, 3]])
    torch.testing.assert_close(F.embedding(ids, qw).float(), w.to(dtype).float()[ids])
    assert Int8Weight(q, s, dtype=dtype, backend=backend, offset=torch.zeros(N)).offset is None  # symmetric


def test_input_permuted_weight_gathers_x_and_dequantizes_in_checkpoint_order(backend):
    torch.manual_seed(2)
    N, K, gs = 48, 128, 32
    w = torch.randn(N, K)
    perm = torch.randperm(K)
    q, s, z = quantize_int4_grouped(w[:, perm], gs)       # stored with the input channels permuted
    pw = InputPermutedWeight(Int4Weight(q, s, z, gs, dtype=torch.float32, backend=backend), perm)
    w_ref = torch.empty(N, K)
    w_ref[:, perm] = ((q.float().reshape(N, -1, gs) - 8) * s[..., None] + z[..., None]).reshape(N, K)
    torch.testing.assert_close(pw.dequantize(torch.float32), w_ref, atol=1e-6, rtol=0)
    x = torch.randn(3, K)
    ref = F.linear(x, w_ref)
    assert _rel(F.linear(x, pw), ref) < TOL_INT4
    # the per-step dense path goes through the inner weight's dense copy with the same gather
    pw.materialize_dense()
    assert pw.dense is pw.inner.dense is not None
    pw.policy = QuantPolicy(crossover=1.0, reason="test")
    assert pw.inner.policy is pw.policy and pw.policy.choose(3) == "dense"
    assert _rel(pw.linear(x), ref) < 2e-5
    pw.drop_dense()
    assert pw.inner.dense is None
