"""The bf16 dot-product kernel (csrc/bf16_dot.cpp) on every instruction set this CPU has plus the forced portable
one: bf16 weights x bf16-rounded activations with float32 accumulation against a float64 widen + matmul of the
same rounded operands, odd shapes (N, K not multiples of the tile or of 32; M in 1, 3, 16, 33), bias, float32 and
bf16 outputs, 2 threads == 1 thread bit for bit; which kernel the op table picks from cpuid and
MINDIE_LIKE_CPU_ISA."""
from __future__ import annotations

import pytest
import torch

from mindie_like.backend_atb import cpu_kernels
from tests.support.native import NATIVE_KERNELS

pytestmark = NATIVE_KERNELS


def _mod():
    mod = cpu_kernels.load()
    if mod is None or not hasattr(mod, "bf16_dot_linear"):
        pytest.skip("the own CPU kernels cannot be built here")
    return mod


def _isas():
    mod = cpu_kernels.load()
    return [] if mod is None else list(cpu_kernels.BF16_ISAS[:int(mod.cpu_bf16_isa()) + 1])


@pytest.fixture(params=list(cpu_kernels.BF16_ISAS))
def isa(request):
    if request.param not in _isas():
        pytest.skip(f"this CPU (or build) has no {request.param} path")
    return cpu_kernels.BF16_ISAS.index(request.param)


def _operands(M, N, K, seed, x_dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g).to(x_dtype)
    w = torch.randn(N, K, generator=g).to(torch.bfloat16)
    b = torch.randn(N, generator=g)
    return x, w, b


def _check(y, x, w, b):
    """y against the float64 product of the bf16-rounded operands, within float32 accumulation's error."""
    xr, wr = x.to(torch.bfloat16).double(), w.double()
    ref = xr @ wr.T + (b.double() if b is not None else 0)
    scale = xr.abs() @ wr.abs().T                      # sum of |terms|: float32 rounding error is relative to it
    err = (y.double() - ref).abs()
    assert bool((err <= 1e-6 * scale * 4 + 1e-6).all()), float((err / (scale + 1e-30)).max())


@pytest.mark.parametrize("M", [1, 3, 16, 33])
@pytest.mark.parametrize("N,K", [(1, 1), (7, 45), (37, 96), (64, 896), (13, 100), (130, 33)])
def test_against_widened_matmul(isa, M, N, K):
    mod = _mod()
    x, w, b = _operands(M, N, K, seed=M * 1000 + N + K)
    for bias in (b, None):
        y = mod.bf16_dot_linear(x, w, bias, isa, True)
        assert y.dtype == torch.float32 and y.shape == (M, N)
        _check(y, x, w, bias)
        yb = mod.bf16_dot_linear(x, w, bias, isa, False)         # x's dtype: the float32 sums rounded once
        assert yb.dtype == torch.bfloat16 and torch.equal(yb, y.to(torch.bfloat16))


def test_float32_activations_are_rounded_to_bf16(isa):
    mod = _mod()
    x, w, b = _operands(5, 21, 70, seed=3, x_dtype=torch.float32)
    y = mod.bf16_dot_linear(x, w, b, isa, False)
    assert y.dtype == torch.float32
    _check(y, x, w, b)
    assert torch.equal(y, mod.bf16_dot_linear(x.to(torch.bfloat16), w, b, isa, True))


def test_two_threads_equal_one(isa):
    mod = _mod()
    x, w, b = _operands(16, 1003, 896, seed=4)       # 251 tiles: split between the threads
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = mod.bf16_dot_linear(x, w, b, isa, True)
        torch.set_num_threads(2)
        two = mod.bf16_dot_linear(x, w, b, isa, True)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_native_close_to_portable():
    mod = _mod()
    if "avx512bf16" not in _isas():
        pytest.skip("no AVX512-BF16 on this CPU")
    x, w, b = _operands(16, 77, 300, seed=5)
    torch.testing.assert_close(mod.bf16_dot_linear(x, w, b, 1, True), mod.bf16_dot_linear(x, w, b, 0, True),
                               atol=1e-4, rtol=1e-5)


def test_bad_arguments():
    mod = _mod()
    x, w, b = _operands(2, 8, 32, seed=6)
    with pytest.raises(RuntimeError, match="bf16"):
        mod.bf16_dot_linear(x, w.float(), None, 0, True)
    with pytest.raises(RuntimeError, match="K"):
        mod.bf16_dot_linear(x[:, :16], w, None, 0, True)
    with pytest.raises(RuntimeError, match="isa"):
        mod.bf16_dot_linear(x, w, None, 7, True)


@pytest.mark.parametrize("env,expected", [("portable", "portable"), ("avx2", "none"), ("avx512vnni", "none"),
                                          (None, "native")])
def test_kernel_choice(monkeypatch, env, expected):
    mod = _mod()
    if env is None:
        monkeypatch.delenv("MINDIE_LIKE_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("MINDIE_LIKE_CPU_ISA", env)
    if expected == "native":
        expected = "avx512bf16" if int(mod.cpu_bf16_isa()) == 1 else "none"
    assert cpu_kernels.bf16_isa(mod) == expected
    monkeypatch.setenv("MINDIE_LIKE_CPU_ISA", "sse9")
    with pytest.raises(ValueError, match="MINDIE_LIKE_CPU_ISA"):
        cpu_kernels.bf16_isa(mod)


def test_op_table_runs_it_for_bf16_weights(monkeypatch):
    """On a CPU with native bf16 (forced here so any machine runs it) the op table sends bf16 linears of up to
    BF16_DOT_MAX_ROWS rows and the lm_head's logits to the kernel; more rows (prefill) run torch's matmul."""
    from mindie_like.backend_atb.ops.torch_ops import TorchOps
    _mod()
    monkeypatch.setenv("MINDIE_LIKE_CPU_BF16", "1")
    monkeypatch.delenv("MINDIE_LIKE_CPU_KERNELS", raising=False)
    monkeypatch.setenv("MINDIE_LIKE_CPU_ISA", "portable")
    ops = TorchOps(torch.device("cpu"), torch.bfloat16)
    assert ops.name == "torch+cpu_kernels(bf16dot:portable)" and ops._gemv is None
    calls = []
    kernel = ops._bf16_dot[0]
    ops._bf16_dot = (lambda *a: calls.append(a[0].shape[0]) or kernel(*a),) + ops._bf16_dot[1:]
    x, w, b = _operands(cpu_kernels.BF16_DOT_MAX_ROWS, 24, 64, seed=7)
    y = ops.linear(x, w, b)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), (x.float() @ w.float().T + b), atol=0.05, rtol=0.02)
    logits = ops.logits(x, w)
    assert logits.dtype == torch.float32
    _check(logits, x, w, None)
    big = torch.randn(cpu_kernels.BF16_DOT_MAX_ROWS + 1, 64).bfloat16()
    ops.linear(big, w, b.bfloat16())
    assert calls == [cpu_kernels.BF16_DOT_MAX_ROWS] * 2
    monkeypatch.setenv("MINDIE_LIKE_CPU_ISA", "avx2")            # no bf16 dot product at that ISA: torch's
    assert TorchOps(torch.device("cpu"), torch.bfloat16)._bf16_dot is None
    assert TorchOps(torch.device("cpu"), torch.float32)._bf16_dot is None
