"""GGUF blocks in their exact packed block form (quant/block_weight.py) and the own block kernel
(csrc/block_gemm.cpp) on every instruction set this CPU has plus the forced portable one, with int8 and float
activations: dequantization equal to the `gguf` package's own, products against a float64 dequantize + matmul
(int8 activations: of the activations rounded per block of 32 as the kernel does, and within the rounding's bound
of the unrounded ones), odd shapes, 2 threads == 1 thread."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

from mindie_like.backend_atb import cpu_kernels
from mindie_like.backend_atb.quant.block_weight import BlockInt8Weight
from mindie_like.backend_atb.quant.gguf import Blocks, block_parts, build_block_weight
from tests.support.native import NATIVE_KERNELS

pytestmark = NATIVE_KERNELS

BYTES = {"Q6_K": 210, "Q4_K": 144}          # formats gguf's quants module cannot quantize: random blocks


def _tensor(fmt, N, K, seed=0):
    rng = np.random.default_rng(seed)
    if fmt in BYTES:
        nb = N * K // 256
        data = rng.integers(0, 256, size=(nb, BYTES[fmt]), dtype=np.uint8)
        if fmt == "Q6_K":
            data[:, 208:210] = np.full((nb, 1), 0.003, np.float16).view(np.uint8)
        else:
            data[:, 0:2] = np.full((nb, 1), 0.01, np.float16).view(np.uint8)
            data[:, 2:4] = np.full((nb, 1), 0.02, np.float16).view(np.uint8)
        data = data.reshape(N, -1)
    else:
        data = quantize(rng.standard_normal((N, K)).astype(np.float32), getattr(T, fmt))
    return SimpleNamespace(name=f"t.{fmt}", tensor_type=getattr(T, fmt), shape=np.array([K, N]), data=data)


def _reference(t):
    return torch.from_numpy(dequantize(t.data, t.tensor_type).astype(np.float32).reshape(int(t.shape[1]), -1))


def _round_activations(x: torch.Tensor) -> torch.Tensor:
    """x rounded per block of 32 to int8 with a float scale d = max|x| / 127, as the int8-activation kernels do."""
    M, K = x.shape
    xb = x.float().reshape(M, K // 32, 32)
    d = xb.abs().amax(-1) / 127
    inv = torch.where(d > 0, 1.0 / torch.where(d > 0, d, torch.ones_like(d)), torch.zeros_like(d))
    return (torch.round(xb * inv[..., None]) * d[..., None]).reshape(M, K)


def _isas():
    mod = cpu_kernels.load()
    if mod is None:
        return []
    return list(cpu_kernels.ISAS[:int(mod.cpu_isa()) + 1])


@pytest.mark.parametrize("fmt", ["Q8_0", "Q5_0", "Q6_K", "Q4_0", "Q4_1", "Q4_K"])
def test_block_form_equals_gguf_dequantization(fmt):
    t = _tensor(fmt, 12, 512)
    q, s, z, g = block_parts(t)
    w = BlockInt8Weight(q, s, z, g, dtype=torch.float32, backend="reference")
    assert g == (16 if fmt == "Q6_K" else 32) and (z is None) == (fmt in ("Q8_0", "Q5_0", "Q6_K"))
    ref = _reference(t)
    if fmt in ("Q8_0", "Q5_0", "Q6_K"):
        assert torch.equal(w.dequantize(torch.float32), ref)          # the same float32 products, bit for bit
    else:
        torch.testing.assert_close(w.dequantize(torch.float32), ref, atol=1e-6, rtol=1e-6)


@pytest.fixture(params=list(cpu_kernels.ISAS))
def isa(request, monkeypatch):
    if request.param not in _isas():
        pytest.skip(f"this CPU (or build) has no {request.param} path")
    monkeypatch.setenv("MINDIE_LIKE_CPU_ISA", request.param)
    return request.param


@pytest.fixture(params=list(cpu_kernels.ACTS))
def act(request, monkeypatch):
    monkeypatch.setenv("MINDIE_LIKE_BLOCK_ACT", request.param)
    return request.param


@pytest.mark.parametrize("fmts,K,bits", [(("Q6_K",), 256, 6), (("Q5_0", "Q8_0"), 96, 8),
                                         (("Q5_0", "Q6_K", "Q4_K"), 512, 6), (("Q5_0",), 64, 5),
                                         (("Q4_1",), 32, 4)])
def test_block_kernel_matches_reference(isa, act, fmts, K, bits):
    """Fused parts of mixed formats (the finest group and the widest width win, zeros where any part has them),
    odd N, 1-33 rows, float32 and bf16 activations."""
    parts = [Blocks.of(_tensor(f, n, K, seed=i)) for i, (f, n) in enumerate(zip(fmts, (7, 50, 13)))]
    w = build_block_weight(parts, torch.float32, "cpu")
    assert w.kernel == f"mindie_like block_linear ({isa}, {bits}-bit weights, {act} activations)"
    panels = (isa, act) == ("avx512vnni", "int8")
    assert w.layout == ("panels" if panels else "rows")
    rows = -(-w.out_features // 16) * 16 if panels else w.out_features        # panels: padded to 16 rows
    assert w.nbytes == rows * K * bits // 8 + rows * K // w.group * 4 * (1 if w.zero is None else 2)
    ref_w = torch.cat([_reference(_tensor(f, n, K, seed=i)) for i, (f, n) in enumerate(zip(fmts, (7, 50, 13)))])
    assert torch.allclose(w.dequantize(torch.float32), ref_w, atol=1e-6, rtol=1e-6)
    g = torch.Generator().manual_seed(K)
    b = torch.randn(w.out_features, generator=g)
    for M, dtype in ((1, torch.float32), (3, torch.bfloat16), (16, torch.float32), (33, torch.float32)):
        x = torch.randn(M, K, generator=g).to(dtype)
        y = w.linear(x, b.to(dtype))
        assert y.dtype == dtype and y.shape == (M, w.out_features)
        exact = F.linear(x.double(), ref_w.double()) + b.to(dtype).double()
        xr = _round_activations(x) if act == "int8" else x
        ref = F.linear(xr.double(), ref_w.double()) + b.to(dtype).double()
        tol = 1e-5 if dtype == torch.float32 else 8e-3
        assert float((y.double() - ref).abs().max() / ref.abs().max()) < tol
        if act == "int8":      # the activation rounding's own bound: |w| * d / 2 summed over k
            d = x.float().reshape(M, K // 32, 32).abs().amax(-1, keepdim=True).expand(M, K // 32, 32) / 127
            bound = (d.reshape(M, K).double() / 2) @ ref_w.double().abs().T
            assert bool(((y.double() - exact).abs() <= bound * 1.001 + tol * exact.abs().max()).all())


def test_two_threads_equal_one(isa, act):
    w = Blocks.of(_tensor("Q5_0", 3000, 256))
    qw = build_block_weight([w], torch.float32, "cpu")
    x = torch.randn(17, 256)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = qw.linear(x)
        torch.set_num_threads(2)
        two = qw.linear(x)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(one, two)


@pytest.mark.parametrize("fmt,bits,per_weight", [("Q4_0", 4, 0.5 + 4 / 32), ("Q4_1", 4, 0.5 + 8 / 32), ("Q5_0", 5, 0.625 + 4 / 32),
                                                 ("Q6_K", 6, 0.75 + 4 / 16), ("Q8_0", 8, 1 + 4 / 32)])
def test_packed_at_the_files_width(fmt, bits, per_weight):
    """Each format packed at its own bit width; the values come back unchanged (embedding rows included)."""
    if cpu_kernels.load() is None:
        pytest.skip("no CPU kernels here")
    t = _tensor(fmt, 32, 256)
    qw = build_block_weight([Blocks.of(t)], torch.float32, "cpu")
    ref = _reference(t)
    for isa in _isas():             # each layout: rows, and the VNNI kernel's 16-row panels
        qw.use_kernel(isa, "int8")
        assert qw.bits == bits and qw.q is None and qw.nbytes == pytest.approx(32 * 256 * per_weight)
        assert torch.allclose(qw.dequantize(torch.float32), ref, atol=1e-6, rtol=1e-6)
        ids = torch.tensor([[5, 0], [2, 31]])
        assert torch.allclose(F.embedding(ids, qw), ref[ids], atol=1e-6, rtol=1e-6)


def test_isa_choice_and_refusals(monkeypatch):
    isas = _isas()
    if not isas:
        pytest.skip("no CPU kernels here")
    monkeypatch.delenv("MINDIE_LIKE_CPU_ISA", raising=False)
    assert cpu_kernels.isa() == isas[-1]                     # the widest this CPU runs
    monkeypatch.setenv("MINDIE_LIKE_CPU_ISA", "portable")
    assert cpu_kernels.isa() == "portable"
    monkeypatch.setenv("MINDIE_LIKE_CPU_ISA", "avx512vnni")
    assert cpu_kernels.isa() == isas[-1]                     # never wider than the CPU
    monkeypatch.setenv("MINDIE_LIKE_CPU_ISA", "sse9")
    with pytest.raises(ValueError, match="MINDIE_LIKE_CPU_ISA"):
        cpu_kernels.isa()
    mod = cpu_kernels.load()
    p, s = mod.block_pack(torch.zeros(4, 32, dtype=torch.int8), 5), torch.ones(4, 1)
    with pytest.raises(RuntimeError, match="not available on this CPU"):
        mod.block_linear(torch.zeros(1, 32), p, 5, s, torch.empty(0), 32, None, len(isas), True)
    with pytest.raises(RuntimeError, match="group"):
        mod.block_linear(torch.zeros(1, 32), p, 5, s, torch.empty(0), 8, None, 0, True)
    with pytest.raises(RuntimeError, match="range"):
        mod.block_pack(torch.full((1, 32), 16, dtype=torch.int8), 5)
    monkeypatch.setenv("MINDIE_LIKE_BLOCK_ACT", "int4")
    with pytest.raises(ValueError, match="MINDIE_LIKE_BLOCK_ACT"):
        cpu_kernels.block_act()
