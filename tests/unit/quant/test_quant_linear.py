"""Each quantized linear against its dequantized reference, odd shapes and all group sizes (CPU kernels)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mindie_like.backend_atb.quant import (Int4Weight, Int8Weight, QuantizedWeight, dequantize_int4,
                                           dequantize_int8, linear, pack_nibbles, quantize_int4_grouped,
                                           quantize_int8_per_channel, quantize_linear_weight, unpack_nibbles)
from tests.support.native import NATIVE_KERNELS

# (tolerance relative to the output's max magnitude) bf16 output rounding ~ 2^-8; fp32 accumulation only
TOL = {torch.float32: 2e-5, torch.bfloat16: 8e-3, torch.float16: 2e-3}
# the own int4 kernel rounds activations to 16-bit fixed point per block of 32 (error <= 2^-16 of the block's
# largest value, measured 1-5e-5 of the output's max on random data; bf16 activations would be 2^-9)
TOL_OWN_INT4 = 2e-4


pytestmark = NATIVE_KERNELS


@pytest.fixture(params=["own", "torch"])
def cpu_kernel(request, monkeypatch):
    """Runs a test with the own kernels forced on (cpu_kernels.py; any AVX2 CPU) and forced off (torch's aten
    kernels, with the shapes they cannot take routed to dequantize + matmul); yields the expected kernel name for
    int8 and int4 weights."""
    from mindie_like.backend_atb import cpu_kernels
    from mindie_like.backend_atb.quant.weight import NATIVE_INT4, NATIVE_INT8
    if request.param == "own":
        monkeypatch.setenv("MINDIE_LIKE_CPU_KERNELS", "1")
        if cpu_kernels.load() is None:
            pytest.skip("own CPU kernels cannot run here (no AVX2/FMA, or no compiler)")
        return {"w8a16": NATIVE_INT8, "w4a16": NATIVE_INT4}
    monkeypatch.setenv("MINDIE_LIKE_CPU_KERNELS", "0")
    return {"w8a16": "aten._weight_int8pack_mm", "w4a16": "aten._weight_int4pack_mm_for_cpu"}


def _rel_err(y, ref):
    return ((y.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-6)).item()


def test_nibble_roundtrip():
    q = torch.randint(0, 16, (5, 64), dtype=torch.uint8)
    assert torch.equal(unpack_nibbles(pack_nibbles(q)), q)


def test_quantization_error_is_bounded():
    torch.manual_seed(0)
    w = torch.randn(40, 256)
    q, s = quantize_int8_per_channel(w)
    assert (dequantize_int8(q, s) - w).abs().max() <= s.max() / 2 + 1e-6
    q4, s4, z4 = quantize_int4_grouped(w, 32)
    err = (dequantize_int4(q4, s4, z4, 32) - w).abs()
    assert err.max() <= s4.max() / 2 + 1e-5
    assert q4.max() <= 15 and q4.min() >= 0


# K = 104 and 120 with bf16 activations read past the row (wrong results, or SIGSEGV) in torch 2.13's AVX512 int8
# kernel; K = 40 and 13 in its AVX2 one too (tools/probe_torch_quant_kernels.py)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("N,K", [(7, 16), (50, 104), (50, 120), (96, 896), (131, 40), (33, 13)])
def test_int8_cpu_matches_reference(cpu_kernel, dtype, N, K):
    from mindie_like.backend_atb.quant.torch_cpu_limits import int8pack_refusal
    torch.manual_seed(N * K)
    w = torch.randn(N, K)
    qw = quantize_linear_weight(w, "w8a16", dtype=dtype, device="cpu")
    assert isinstance(qw, Int8Weight) and qw.backend == "cpu"
    if cpu_kernel["w8a16"].startswith("aten") and int8pack_refusal(dtype, K):
        assert qw.kernel.startswith("dequant")
    else:
        assert qw.kernel == cpu_kernel["w8a16"]
    b = torch.randn(N, dtype=dtype)
    for M in (1, 3, 17):
        x = torch.randn(M, K, dtype=dtype)
        y = qw.linear(x, b)
        assert y.shape == (M, N) and y.dtype == dtype
        ref = F.linear(x.float(), dequantize_int8(qw.q, qw.scale)) + b.float()
        assert _rel_err(y, ref) < TOL[dtype]
    # activations that start off a 32-byte boundary (a view 8 values into its buffer): torch's AVX512 bf16 path
    # loads them aligned and faults; the weight copies them first
    buf = torch.randn(5 * K + 8, dtype=dtype)
    x = buf[8:].view(5, K)
    ref = F.linear(x.float(), dequantize_int8(qw.q, qw.scale))
    assert _rel_err(qw.linear(x), ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gs", [32, 64, 128, 256])
@pytest.mark.parametrize("N", [16, 50, 136, 7])
def test_int4_cpu_matches_reference(cpu_kernel, dtype, gs, N):
    # in_features not multiples of 64 where the group size allows it (K must be a multiple of the group size)
    K = {32: 96, 64: 320, 128: 384, 256: 768}[gs]
    torch.manual_seed(gs + N)
    w = torch.randn(N, K)
    q, s, z = quantize_int4_grouped(w, gs, dtype)
    qw = Int4Weight(q, s, z, gs, dtype=dtype, device="cpu")
    assert qw.kernel == cpu_kernel["w4a16"]
    ref_w = dequantize_int4(q, s, z, gs)
    for M in (1, 5, 33):
        x = torch.randn(M, K, dtype=dtype)
        y = qw.linear(x)
        assert y.shape == (M, N) and y.dtype == dtype
        tol = max(TOL[dtype], TOL_OWN_INT4) if cpu_kernel["w4a16"].startswith("mindie_like") else TOL[dtype]
        assert _rel_err(y, F.linear(x.float(), ref_w)) < tol
    if dtype == torch.bfloat16 and N == 50:
        # dequantize (torch kernel: through the kernel on the identity) equals the reference dequantization
        assert torch.equal(qw.dequantize(torch.bfloat16), ref_w.to(torch.bfloat16))


def test_int4_refuses_bad_group_sizes():
    w = torch.randn(16, 100)
    with pytest.raises(ValueError, match="not a multiple of group size 32"):
        quantize_linear_weight(w, "w4a16", 32)
    with pytest.raises(ValueError, match="group size 16 not supported"):
        quantize_linear_weight(torch.randn(16, 64), "w4a16", 16)
    with pytest.raises(ValueError, match="not supported"):
        quantize_linear_weight(w, "w3a16")


def test_3d_input_and_generic_linear_and_torch_function():
    torch.manual_seed(1)
    w = torch.randn(48, 64)
    for scheme in ("w8a16", "w4a16"):
        qw = quantize_linear_weight(w, scheme, 32, dtype=torch.float32)
        x = torch.randn(2, 3, 64)
        y1 = qw.linear(x)
        assert y1.shape == (2, 3, 48)
        assert torch.equal(linear(x, qw), y1)
        assert torch.equal(F.linear(x, qw), y1)               # __torch_function__ protocol
        assert _rel_err(y1, qw.reference_linear(x)) < TOL_OWN_INT4
        assert torch.equal(linear(x, w), F.linear(x, w))
        with pytest.raises(TypeError, match="supports only"):
            torch.matmul(x, qw)


@pytest.mark.parametrize("scheme", ["w8a16", "w4a16"])
def test_embedding_rows_dequantized(scheme):
    torch.manual_seed(2)
    w = torch.randn(100, 64)
    qw = quantize_linear_weight(w, scheme, 32, dtype=torch.bfloat16, keep_rows=True)
    ids = torch.tensor([[3, 99, 0], [5, 5, 42]])
    rows = F.embedding(ids, qw)
    assert rows.shape == (2, 3, 64) and rows.dtype == torch.bfloat16
    assert torch.equal(rows, qw.dequantize(torch.bfloat16)[ids])
    assert (rows.float() - w[ids]).abs().max() < (0.05 if scheme == "w8a16" else 0.5)


def test_int4_embedding_without_rows_refused():
    qw = quantize_linear_weight(torch.randn(32, 64), "w4a16", 32)
    with pytest.raises(RuntimeError, match="keep_rows"):
        qw.embedding(torch.tensor([1]))


def test_reference_backend_and_sizes():
    torch.manual_seed(3)
    w = torch.randn(24, 64)
    for scheme in ("w8a16", "w4a16"):
        qa = quantize_linear_weight(w, scheme, 32, dtype=torch.float32, backend="reference")
        qb = quantize_linear_weight(w, scheme, 32, dtype=torch.float32)
        x = torch.randn(4, 64)
        assert qa.kernel == "dequant-matmul"
        assert _rel_err(qb.linear(x), qa.linear(x)) < TOL_OWN_INT4
        assert qb.shape == (24, 64) and isinstance(qb, QuantizedWeight)
        assert qb.numel() * qb.element_size() == qb.nbytes < w.numel() * 2


def test_dense_copy_path_and_float32_dense_copy():
    from mindie_like.backend_atb.quant import QuantPolicy
    from mindie_like.backend_atb.quant.policy import faster_dense_dtype
    torch.manual_seed(4)
    w = torch.randn(64, 128)
    for scheme in ("w8a16", "w4a16"):
        qw = quantize_linear_weight(w, scheme, 32, dtype=torch.bfloat16, keep_dense=True)
        assert qw.dense is not None and qw.dense.dtype == torch.bfloat16
        assert torch.equal(qw.dense, qw.dequantize(torch.bfloat16))
        qw.policy = QuantPolicy(crossover=8)
        x = torch.randn(10, 128, dtype=torch.bfloat16)
        ref = F.linear(x.float(), qw.dense.float())
        assert _rel_err(qw.linear(x), ref) < TOL[torch.bfloat16]            # dense path (10 >= 8 rows)
        assert _rel_err(qw.linear(x[:3]), ref[:3]) < TOL[torch.bfloat16]    # quantized path
        qw.dense = qw.dense.float()                                          # float32 copy: cast in and out
        y = qw.linear(x)
        assert y.dtype == torch.bfloat16 and _rel_err(y, ref) < TOL[torch.bfloat16]
        assert faster_dense_dtype([quantize_linear_weight(w, scheme, 32, dtype=torch.float32, keep_dense=True)]) \
            is None


def test_float32_activations_on_bf16_quantized_weight_and_op_table():
    """W16A32 (float32 activations, bf16 weights): cast in and out; the op table routes to the weight's kernels."""
    from mindie_like.backend_atb.ops.torch_ops import TorchOps
    torch.manual_seed(5)
    w = torch.randn(48, 64)
    for scheme in ("w8a16", "w4a16"):
        qw = quantize_linear_weight(w, scheme, 32, dtype=torch.bfloat16)
        x = torch.randn(3, 64)
        b = torch.randn(48)
        y = TorchOps().linear(x, qw, b)
        assert y.dtype == torch.float32
        ref = F.linear(x.to(torch.bfloat16).float(), qw.dequantize(torch.float32)) + b
        assert _rel_err(y, ref) < TOL[torch.bfloat16]


def _rounded_activations(x: torch.Tensor, bits: int) -> torch.Tensor:
    """The own int4 kernel's activation rounding, in its float32 operation order: per block of 32, amax = max|x|,
    q = round(x * (qmax / amax)) (half to even), x -> q * (amax / qmax), qmax = 2^(bits-1) - 1."""
    M, K = x.shape
    qmax = float(2 ** (bits - 1) - 1)
    xb = x.float().reshape(M, K // 32, 32)
    amax = xb.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, qmax / amax, torch.zeros_like(amax))
    return (torch.round(xb * inv) * (amax / qmax)).reshape(M, K)


@pytest.mark.parametrize("act_bits", [8, 16])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("gs,K", [(32, 32), (32, 96), (32, 224), (32, 896), (64, 320), (128, 384), (256, 768)])
def test_own_int4_is_exact_on_its_rounded_activations(act_bits, dtype, gs, K):
    """The own kernel computes W x' (up to float32 accumulation) for x' = the activations rounded per block
    of 32 to `act_bits`: block counts that exercise the 8-, 4- and 1-block paths, 1-17 rows (the 4/2/1-row
    kernels), every group size, bf16 (stored as is) and float32 scale planes."""
    from mindie_like.backend_atb import cpu_kernels
    from mindie_like.backend_atb.quant.weight import NATIVE_INT4
    if not cpu_kernels.wanted("quant") or cpu_kernels.load() is None:
        pytest.skip("own CPU kernels cannot run here (no AVX2/FMA, no compiler, or switched off)")
    torch.manual_seed(K + gs + act_bits)
    N = 37
    q, s, z = quantize_int4_grouped(torch.randn(N, K), gs, dtype)
    qw = Int4Weight(q, s, z, gs, dtype=dtype, act_bits=act_bits)
    assert qw.kernel == NATIVE_INT4 and qw.sz.dtype == dtype and qw.sz.shape == (2, N, K // gs)
    assert qw.nbytes == N * K // 2 + 2 * N * (K // gs) * qw.sz.element_size()
    ref_w = dequantize_int4(q, s, z, gs)
    b = torch.randn(N)
    for M in (1, 2, 3, 4, 5, 7, 17):
        x = torch.randn(M, K) * 3
        x[0, :5] = 0.0
        y = qw.linear(x, b)
        ref = F.linear(_rounded_activations(x, act_bits).double(), ref_w.double()) + b.double()
        assert _rel_err(y, ref) < 1e-5          # float32 accumulation (the zero term cancels ~8x larger sums)
        if act_bits == 16:
            assert _rel_err(y, F.linear(x, ref_w) + b) < TOL_OWN_INT4
    zero_x = torch.zeros(2, K)
    assert torch.equal(qw.linear(zero_x), torch.zeros(2, N))


def test_int4_act_bits_checked():
    w = torch.randn(16, 64)
    q, s, z = quantize_int4_grouped(w, 32)
    with pytest.raises(ValueError, match="act_bits"):
        Int4Weight(q, s, z, 32, act_bits=4)


def test_own_int4_chunks_over_threads_give_the_same_result():
    """Rows in many ~64 KiB chunks taken by 2 threads from a shared counter: the same numbers as one thread."""
    from mindie_like.backend_atb import cpu_kernels
    if not cpu_kernels.wanted("quant") or cpu_kernels.load() is None:
        pytest.skip("own CPU kernels cannot run here (no AVX2/FMA, no compiler, or switched off)")
    torch.manual_seed(3)
    N, K = 5000, 256                       # 128 bytes per row: 512-row chunks, 10 of them
    q, s, z = quantize_int4_grouped(torch.randn(N, K), 32, torch.bfloat16)
    qw = Int4Weight(q, s, z, 32, dtype=torch.bfloat16, act_bits=8)
    x = torch.randn(5, K)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = qw.linear(x)
        torch.set_num_threads(2)
        two = qw.linear(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    ref = F.linear(_rounded_activations(x, 8).double(), dequantize_int4(q, s, z, 32).double())
    assert _rel_err(two, ref) < 1e-5
