"""Weight-only quantization math (device independent, plain torch): the reference every kernel is tested against.

Conventions (the ones torch's CPU/CUDA weight-only kernels use, so no conversion is needed at pack time):

* **int8, per output channel, symmetric**: ``w[n, k] = q[n, k] * scale[n]``, ``q`` int8 in [-127, 127].
* **int4, grouped along K, asymmetric** ("scales and zeros", zero in the float domain):
  ``w[n, k] = (q[n, k] - 8) * scale[n, g] + zero[n, g]`` with ``g = k // group_size`` and ``q`` in [0, 15].

Parameters are rounded to the dtype they will be stored in (`param_dtype`, the activation dtype: the kernels take
scales in it) *before* the integer values are chosen, so the reference dequantization is exactly what the kernels
compute, up to the matmul's own accumulation.

Canonical int4 storage is nibble-packed row-major, ``[N, K // 2]`` uint8, element ``2j`` in the low nibble and
``2j + 1`` in the high nibble (the same order as GGUF's Q4_0 inside a block pair is not assumed anywhere).
"""
from __future__ import annotations

import torch

INT4_GROUP_SIZES = (32, 64, 128, 256)


def quantize_int8_per_channel(w: torch.Tensor, param_dtype: torch.dtype = torch.float32):
    """w [N, K] float -> (q int8 [N, K], scale [N] in `param_dtype`)."""
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
    wf = w.float()
    amax = wf.abs().amax(dim=1)
    scale = (amax / 127.0).clamp_min(1e-12).to(param_dtype)
    sf = scale.float()
    q = torch.round(wf / sf[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.float() * scale.float()[:, None]).to(dtype)


def check_group_size(in_features: int, group_size: int) -> None:
    if group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"int4 group size {group_size} not supported (one of {INT4_GROUP_SIZES})")
    if in_features % group_size:
        raise ValueError(f"int4: in_features {in_features} is not a multiple of group size {group_size}; "
                         f"pick a group size that divides it")


def quantize_int4_grouped(w: torch.Tensor, group_size: int = 32, param_dtype: torch.dtype = torch.float32):
    """w [N, K] float -> (q uint8 [N, K] values 0..15, scale [N, K/gs], zero [N, K/gs]) (min/max per group)."""
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
    N, K = w.shape
    check_group_size(K, group_size)
    wg = w.float().reshape(N, K // group_size, group_size)
    mn = wg.amin(dim=-1)
    mx = wg.amax(dim=-1)
    scale = ((mx - mn) / 15.0).clamp_min(1e-8).to(param_dtype)
    zero = (mn + 8.0 * scale.float()).to(param_dtype)
    sf, zf = scale.float()[..., None], zero.float()[..., None]
    q = torch.round((wg - zf) / sf + 8.0).clamp_(0, 15).to(torch.uint8).reshape(N, K)
    return q, scale, zero


def dequantize_int4(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q [N, K] (0..15) -> float [N, K]."""
    N, K = q.shape
    qg = q.float().reshape(N, K // group_size, group_size)
    w = (qg - 8.0) * scale.float()[..., None] + zero.float()[..., None]
    return w.reshape(N, K).to(dtype)


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """[N, K] values 0..15 (K even) -> [N, K/2] uint8, even k in the low nibble."""
    if q.shape[-1] % 2:
        raise ValueError("int4 packing needs an even number of columns")
    q = q.to(torch.uint8)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).contiguous()


def unpack_nibbles(p: torch.Tensor) -> torch.Tensor:
    """[N, K/2] uint8 -> [N, K] uint8 values 0..15."""
    lo = p & 0x0F
    hi = p >> 4
    return torch.stack((lo, hi), dim=-1).reshape(*p.shape[:-1], p.shape[-1] * 2)
