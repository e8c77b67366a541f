"""Rotary position embeddings: one cos/sin cache per model, applied through the op table.

Layout: half-split ("neox", rotate_half: dimension i pairs with i + rotary_dim/2), what llama / mistral / qwen use.
Partial rotary (`rotary_dim` < head_dim): only the first rotary_dim dimensions of each head turn, the rest pass.
The scaling kinds transformers defines (linear, llama3, yarn, dynamic's start, ...) come from its own
`ROPE_INIT_FUNCTIONS`, so the frequencies and the attention factor match the reference exactly.

The interleaved (GPT-J) layout, where dimension 2i pairs with 2i+1 (`is_neox_style=False`: GLM-4, DeepSeek's
`rope_interleave`), takes its tables and rotation from layers/interleaved_rope.py, on the same cos/sin cache.
A model may pass its own `inv_freq_fn(cfg, rotary_dim) -> (inv_freq, attention_scaling)`.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .interleaved_rope import apply_interleaved, interleaved_tables

SUPPORTED_ROPE = ("default", "linear", "llama3", "yarn")


def rope_parameters(cfg) -> dict:
    return getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}


def rope_type_of(cfg) -> str:
    rp = rope_parameters(cfg)
    return rp.get("rope_type", rp.get("type", "default")) or "default"


def default_inv_freq(cfg, rotary_dim: int) -> tuple[torch.Tensor, float]:
    """(inv_freq [rotary_dim/2] float32, attention scaling) for `cfg`'s rope type."""
    rtype = rope_type_of(cfg)
    if rtype == "default":
        base = rope_parameters(cfg).get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        inv = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))
        return inv, 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    inv, scaling = ROPE_INIT_FUNCTIONS[rtype](cfg, torch.device("cpu"))
    return inv.float(), float(scaling)


def build_cos_sin_cache(cfg, rotary_dim: int, max_pos: int,
                        inv_freq_fn: Optional[Callable] = None) -> torch.Tensor:
    """[max_pos, rotary_dim] float32: cat(cos, sin) of the rotary_dim/2 frequencies, attention scaling applied."""
    inv_freq, scaling = (inv_freq_fn or default_inv_freq)(cfg, rotary_dim)
    t = torch.arange(max_pos, dtype=torch.float32)
    freqs = t[:, None] * inv_freq[None, :]
    return torch.cat((freqs.cos() * scaling, freqs.sin() * scaling), dim=-1).contiguous()


class RotaryEmbedding:
    def __init__(self, cfg, head_dim: int, max_pos: int, device: torch.device, rotary_dim: Optional[int] = None,
                 is_neox_style: bool = True, inv_freq_fn: Optional[Callable] = None):
        self.cfg, self.device = cfg, device
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim or head_dim
        self.is_neox_style = is_neox_style
        self.inv_freq_fn = inv_freq_fn
        self.cos_sin = build_cos_sin_cache(cfg, self.rotary_dim, max_pos, inv_freq_fn).to(device)

    @property
    def full(self) -> bool:
        """Every dimension of the head turns, half-split (what the fused decode kernels assume)."""
        return self.rotary_dim == self.head_dim and self.is_neox_style

    def ensure_positions(self, max_pos: int) -> None:
        if max_pos >= self.cos_sin.shape[0]:
            n = max(max_pos + 1, 2 * self.cos_sin.shape[0])
            self.cos_sin = build_cos_sin_cache(self.cfg, self.rotary_dim, n, self.inv_freq_fn).to(self.device)

    def tables(self, ops, positions: torch.Tensor, dtype: torch.dtype):
        """The step's (cos, sin) in the op table's layout (computed once per step, shared by the layers); the
        interleaved layout's per-pair halves [T, 1, rotary_dim/2]."""
        if not self.is_neox_style:
            return interleaved_tables(self.cos_sin, positions, dtype)
        return ops.rope_tables(self.cos_sin, positions, dtype)

    def apply_heads(self, ops, x: torch.Tensor, tables) -> torch.Tensor:
        """x [T, N, head_dim] rotated (the first rotary_dim dimensions; the rest pass)."""
        cos, sin = tables
        if not self.is_neox_style:
            own = getattr(ops, "rope_interleaved", None)        # an op table's fused kernel, where it has one
            return own(x, cos, sin) if own is not None else apply_interleaved(x, cos, sin)
        if self.full:
            return ops.rope_heads(x, cos, sin)
        rd = self.rotary_dim
        return torch.cat((ops.rope_heads(x[..., :rd].contiguous(), cos, sin), x[..., rd:]), dim=-1)
