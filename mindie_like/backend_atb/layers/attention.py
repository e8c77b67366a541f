"""Paged attention for MHA / GQA through the op table: the KV write and the prefill / decode kernels.

KV cache per layer: (k_cache, v_cache), each [num_blocks, block_size, num_kv_heads, head_dim] (this rank's kv
heads). `meta` is the op table's per-step attention metadata (`ops.prepare`)."""
from __future__ import annotations

from typing import Optional

import torch


class PagedAttention:
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float, window: Optional[int] = None):
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = scale
        self.window = window

    def kv_cache_shape(self, num_blocks: int, block_size: int) -> tuple[int, ...]:
        return num_blocks, block_size, self.num_kv_heads, self.head_dim

    def forward(self, ops, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache, meta) -> torch.Tensor:
        """q [T, Hq, D], k/v [T, Hk, D] (rotated) -> [T, Hq*D]; this step's k/v are written to the cache first."""
        kc, vc = kv_cache
        ops.write_kv(k, v, kc, vc, meta.slot_mapping)
        if meta.is_decode:
            return ops.attention_decode(q, kc, vc, meta, self.window)
        return ops.attention_prefill(q, k, v, kc, vc, meta, self.window)

    def forward_rope_decode(self, ops, q, k, v, kv_cache, meta, cos_sin: torch.Tensor,
                            positions: torch.Tensor) -> torch.Tensor:
        """A decode step's rope + KV write + attention in one op-table call (`ops.has_fused_decode_attention`);
        q/k un-rotated."""
        kc, vc = kv_cache
        return ops.rope_attention_decode(q, k, v, kc, vc, meta, self.window, cos_sin, positions)
