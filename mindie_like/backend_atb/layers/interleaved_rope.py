"""Rotary embedding pieces the DeepSeek and GLM families need on top of the half-split (NeoX) layout:

* the interleaved (GPT-J) layout: dims (2i, 2i+1) form pair i, rotated by frequency i (GLM's native weights,
  DeepSeek's `rope_interleave`);
* partial rotary: only the first `rotary_dim` dims of a head rotate, the rest pass through (GLM);
* YaRN's softmax-scale correction (`mscale_all_dim`) that MLA applies to the whole q.k product, not only to the
  rotary dims.

Frequencies come from transformers' own rope init functions (default, linear, llama3, yarn ...), so a checkpoint's
`rope_parameters` mean here what they mean there.
"""
from __future__ import annotations

import math

import torch


def rope_parameters(cfg) -> dict:
    rp = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    return dict(rp)


def rotary_dim_of(cfg, head_dim: int) -> int:
    """Rotating dims of a head: head_dim x partial_rotary_factor (rope_parameters, else the config attribute)."""
    rp = rope_parameters(cfg)
    factor = rp.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", None)) or 1.0
    return int(head_dim * float(factor))


def rotary_cos_sin(cfg, rotary_dim: int, max_pos: int) -> torch.Tensor:
    """[max_pos, rotary_dim] float32 = cat(cos, sin) of the rotary_dim/2 frequencies, YaRN's attention factor
    (the cos/sin scaling) applied. The layout the op table's `rope_tables` reads."""
    rp = rope_parameters(cfg)
    rtype = rp.get("rope_type", rp.get("type", "default")) or "default"
    if rtype == "default":
        base = rp.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))
        scaling = 1.0
    else:
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rtype](cfg, torch.device("cpu"))
        inv_freq = inv_freq.float()
        if inv_freq.shape[0] * 2 != rotary_dim:
            raise ValueError(f"rope init gave {inv_freq.shape[0] * 2} rotary dims, the model rotates {rotary_dim}")
    t = torch.arange(max_pos, dtype=torch.float32)
    freqs = t[:, None] * inv_freq[None, :]
    return torch.cat((freqs.cos() * scaling, freqs.sin() * scaling), dim=-1).contiguous()


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
    """Per-step (cos, sin), each [T, 1, rotary_dim/2], from a `rotary_cos_sin` cache."""
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


def apply_half_split(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """NeoX rotary (dim i pairs with i + rd/2) of the first 2*cos.shape[-1] dims of x [T, N, D], rest passed."""
    h = cos.shape[-1]
    rd = 2 * h
    x0, x1 = x[..., :h], x[..., h:rd]
    rot = torch.cat((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1)
    if rd == x.shape[-1]:
        return rot
    return torch.cat((rot, x[..., rd:]), dim=-1)
