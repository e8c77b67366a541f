"""The optional C++ bf16 GEMV (CPUs with AVX2 but no native bf16) against a float64 reference."""
from __future__ import annotations

import pytest
import torch

from mindie_like.backend_atb import cpu_kernels
from tests.support.native import NATIVE_KERNELS


pytestmark = NATIVE_KERNELS


@pytest.fixture(scope="module")
def gemv():
    """The kernels forced on (MINDIE_LIKE_CPU_KERNELS=1): tested on any CPU that can run them, including those
    (native bf16) where the runner does not pick them by default."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINDIE_LIKE_CPU_KERNELS", "1")
        if not cpu_kernels.runnable():
            pytest.skip("no AVX2/FMA: the kernels cannot run on this CPU")
        mod = cpu_kernels.load()       # builds once (about a minute), then cached
        if mod is None:
            pytest.skip("no C++ toolchain: the runner falls back to torch matmul")
        yield mod.bf16_linear


@pytest.mark.parametrize("M", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("N,K", [(1, 8), (3, 13), (64, 896), (37, 100)])
@pytest.mark.parametrize("bias", [False, True])
def test_bf16_linear_matches_reference(gemv, M, N, K, bias):
    g = torch.Generator().manual_seed(M * 1000 + N * 10 + K)
    x = torch.randn(M, K, generator=g).bfloat16()
    w = torch.randn(N, K, generator=g).bfloat16()
    b = torch.randn(N, generator=g).bfloat16() if bias else None
    y = gemv(x, w, b)
    assert y.dtype == torch.bfloat16 and y.shape == (M, N)
    ref = x.double() @ w.double().T + (b.double() if bias else 0)
    torch.testing.assert_close(y.double(), ref, atol=1e-2 * float(ref.abs().max()), rtol=1e-2)
    yf = gemv(x.float(), w, b)                     # float32 activations come back float32
    assert yf.dtype == torch.float32
    torch.testing.assert_close(yf.double(), ref, atol=1e-4 * float(ref.abs().max()), rtol=1e-4)


def test_op_table_uses_it_only_for_small_bf16_batches(gemv):
    from mindie_like.backend_atb.ops import TorchOps
    ops = TorchOps(torch.device("cpu"), torch.bfloat16)
    assert ops._gemv is not None and "bf16gemv" in ops.name and ops._f32 is not None
    w = torch.randn(16, 32).bfloat16()
    for m in (1, 8, 9, 40):
        x = torch.randn(m, 32).bfloat16()
        torch.testing.assert_close(ops.linear(x, w).float(), torch.nn.functional.linear(x, w).float(),
                                   atol=0.1, rtol=0.02)
    assert TorchOps(torch.device("cpu"), torch.float32)._gemv is None
    assert TorchOps()._f32 is None and TorchOps()._gemv is None     # no device: plain torch


@pytest.mark.parametrize("T,H", [(1, 896), (3, 13), (16, 64)])
def test_rms_norm_kernels_match_torch(gemv, T, H):
    from mindie_like.backend_atb.ops import TorchOps
    g = torch.Generator().manual_seed(T * 100 + H)
    x, r = (torch.randn(T, H, generator=g) * 3 for _ in range(2))
    w = torch.randn(H, generator=g)
    ops = TorchOps(torch.device("cpu"), torch.float32)
    assert ops._f32 is not None
    ref = torch.nn.functional.rms_norm(x.double(), (H,), w.double(), 1e-6)
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-6).double(), ref, atol=1e-5, rtol=1e-5)
    y, s = ops.add_rms_norm(x, r, w, 1e-6)
    assert torch.equal(s, x + r)
    ref = torch.nn.functional.rms_norm((x + r).double(), (H,), w.double(), 1e-6)
    torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)
    q = torch.randn(2, 3, H, generator=g)            # 3-D (q/k norms): torch's rms_norm, same result
    torch.testing.assert_close(ops.rms_norm(q, w, 1e-6), torch.nn.functional.rms_norm(q, (H,), w, 1e-6))
