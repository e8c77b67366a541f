"""What the DeepSeek and GLM families need from rotary embeddings beyond the half-split layout (rotary.py):

* the interleaved (GPT-J) layout: dims (2i, 2i+1) form pair i, rotated by frequency i (GLM-4's native weights,
  DeepSeek's `rope_interleave`), on the same cat(cos, sin) cache as the half-split layout;
* the rotary width of a partial-rotary config (`partial_rotary_factor`, in `rope_parameters` under transformers 5);
* YaRN's softmax-scale correction (`mscale_all_dim`) that MLA applies to the whole q.k product, not only to the
  rotary dims (the cos/sin attention factor comes with the cache, from transformers' rope init functions).
"""
from __future__ import annotations

import math

import torch


def rope_parameters(cfg) -> dict:
    return dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})


def rotary_dim_of(cfg, head_dim: int) -> int:
    """Rotating dims of a head: head_dim x partial_rotary_factor (rope_parameters, else the config attribute)."""
    factor = rope_parameters(cfg).get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", None)) or 1.0
    return int(head_dim * float(factor))


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def mla_softmax_scale(cfg, qk_head_dim: int) -> float:
    """1/sqrt(qk_head_dim), times mscale(factor, mscale_all_dim)^2 under YaRN: DeepSeek scales the whole q.k
    product (the non-rotary dims too), on top of the cos/sin attention factor."""
    scale = qk_head_dim ** -0.5
    rp = rope_parameters(cfg)
    rtype = rp.get("rope_type", rp.get("type", "default")) or "default"
    if rtype != "default" and rp.get("mscale_all_dim"):
        m = yarn_mscale(float(rp["factor"]), float(rp["mscale_all_dim"]))
        scale *= m * m
    return scale


def interleaved_tables(cos_sin: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype):
    """Per-step (cos, sin), each [T, 1, rotary_dim/2], from a [max_pos, rotary_dim] cat(cos, sin) cache."""
    cs = cos_sin.index_select(0, positions)
    half = cs.shape[-1] // 2
    return cs[:, None, :half].to(dtype), cs[:, None, half:].to(dtype)


def apply_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """GPT-J rotary of the first 2*cos.shape[-1] dims of x [T, N, D] (the rest pass through), layout kept:
    out[2i] = x[2i] cos_i - x[2i+1] sin_i, out[2i+1] = x[2i+1] cos_i + x[2i] sin_i."""
    rd = 2 * cos.shape[-1]
    xr = x[..., :rd].unflatten(-1, (-1, 2))
    x0, x1 = xr[..., 0], xr[..., 1]
    rot = torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1).flatten(-2)
    if rd == x.shape[-1]:
        return rot
    return torch.cat((rot, x[..., rd:]), dim=-1)
