"""GGUF block formats mapped to quantized weights: the mapped values equal gguf's own dequantization."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

from mindie_like.backend_atb.quant import Int4Weight, Int8Weight
from mindie_like.backend_atb.quant.gguf import build_weight, tensor_parts, _unpermute_llama

N, K = 48, 512


def _tensor(name, fmt, data):
    return SimpleNamespace(name=name, tensor_type=getattr(T, fmt), shape=np.array([K, N]), data=data)


def _q4k_blocks(rng, n_rows):
    nb = n_rows * K // 256
    b = rng.integers(0, 256, size=(nb, 144), dtype=np.uint8)
    b[:, 0:2] = np.full((nb, 1), 0.01, np.float16).view(np.uint8)      # d
    b[:, 2:4] = np.full((nb, 1), 0.02, np.float16).view(np.uint8)      # dmin
    return b.reshape(n_rows, -1)


@pytest.mark.parametrize("fmt", ["Q4_0", "Q4_1", "Q4_K", "Q8_0", "Q5_0", "Q6_K"])
def test_block_formats_match_gguf_dequantize(fmt):
    rng = np.random.default_rng(0)
    if fmt == "Q4_K" or fmt == "Q6_K":
        if fmt == "Q6_K":
            pytest.importorskip("gguf")
            data = rng.integers(0, 256, size=(N * K // 256, 210), dtype=np.uint8)
            data[:, -2:] = np.full((data.shape[0], 1), 0.01, np.float16).view(np.uint8)
            data = data.reshape(N, -1)
        else:
            data = _q4k_blocks(rng, N)
    else:
        data = quantize(rng.standard_normal((N, K)).astype(np.float32), getattr(T, fmt))
    ref = torch.from_numpy(dequantize(data, getattr(T, fmt)).reshape(N, K).astype(np.float32))
    p = tensor_parts(_tensor("blk.0.ffn_down.weight", fmt, data))
    assert p.is_int4 == (fmt in ("Q4_0", "Q4_1", "Q4_K"))
    torch.testing.assert_close(p.float(), ref, atol=1e-5, rtol=1e-5)
    qw = build_weight([p], "gguf", torch.float32, "cpu")
    assert isinstance(qw, Int4Weight if p.is_int4 else Int8Weight)
    if p.is_int4:                                       # int4 formats map exactly
        torch.testing.assert_close(qw.dequantize(torch.float32), ref, atol=1e-5, rtol=1e-5)
    x = torch.randn(3, K)
    y = qw.linear(x)
    err = (y - F.linear(x, ref)).abs().max() / F.linear(x, ref).abs().max()
    # int8 re-quantizes; the int4 kernels compute exactly up to float accumulation (torch's) or the own kernel's
    # 16-bit fixed-point activations (<= 2^-16 of each block of 32's largest value)
    assert err < (2e-4 if p.is_int4 else 2.5e-2)


def test_fused_mixed_classes_become_int8_and_w4_request_converts():
    rng = np.random.default_rng(1)
    a = tensor_parts(_tensor("blk.0.attn_q.weight", "Q4_0",
                             quantize(rng.standard_normal((N, K)).astype(np.float32), T.Q4_0)))
    b = tensor_parts(_tensor("blk.0.attn_v.weight", "Q8_0",
                             quantize(rng.standard_normal((N, K)).astype(np.float32), T.Q8_0)))
    assert isinstance(build_weight([a, b], "gguf", torch.float32, "cpu"), Int8Weight)
    w4 = build_weight([a, b], "w4a16", torch.float32, "cpu")
    assert isinstance(w4, Int4Weight) and w4.shape == (2 * N, K)
    # the Q4_0 half is exact, the Q8_0 half is re-quantized to int4
    torch.testing.assert_close(w4.dequantize(torch.float32)[:N], a.float(), atol=1e-5, rtol=1e-5)


def test_unsupported_format_refused_with_its_name():
    t = SimpleNamespace(name="blk.3.ffn_up.weight", tensor_type=T.Q2_K, shape=np.array([K, N]), data=None)
    with pytest.raises(ValueError, match="blk.3.ffn_up.weight: format Q2_K is not supported"):
        tensor_parts(t)


def test_llama_unpermute_rows():
    # llama.cpp's converter: w.reshape(n_head, 2, hd/2, K).swapaxes(1, 2); undoing it restores the HF rows
    n_head, hd = 4, 8
    hf = torch.arange(n_head * hd * 32, dtype=torch.float32).reshape(n_head * hd, 32)
    gg = hf.reshape(n_head, 2, hd // 2, 32).transpose(1, 2).reshape(n_head * hd, 32)
    from mindie_like.backend_atb.quant.gguf import Parts
    assert torch.equal(_unpermute_llama(Parts("q", "F32", w=gg), n_head).float(), hf)
