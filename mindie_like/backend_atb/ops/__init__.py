"""The op table: one set of ops the model code is written against, one implementation per device kind.

    rms_norm(x, w, eps) -> y
    add_rms_norm(x, residual, w, eps) -> (y, x + residual)
    rope_tables(cos_sin_cache, positions, dtype) -> (cos, sin)   once per step, in the layout the table's rope wants
    rope_heads(x, cos, sin) -> x rotated          x [T, N, D] (q and k together when they are adjacent)
    rope(q, k, cos, sin) -> (q, k)              q [T, Hq, D], k [T, Hk, D]
    silu_and_mul(x) -> silu(x[:, :I]) * x[:, I:]
    write_kv(k, v, k_cache, v_cache, slot_mapping)
    attention_prefill(q, k, v, k_cache, v_cache, meta, layer) -> [T, Hq*D]   varlen causal, cached prefix allowed
    attention_decode(q, k_cache, v_cache, meta, layer) -> [B, Hq*D]          one new token per sequence, paged
    linear(x, w, b=None) -> x @ w.T + b
    moe_select(router_logits, spec, correction_bias) -> (weights [T, k] float32, expert ids [T, k])
    moe_experts(x, weights, ids, layer) -> [T, H]   this rank's experts (layers.moe.FusedMoE) on their tokens only

KV cache per layer: k_cache, v_cache [num_blocks, block_size, num_kv_heads, head_dim] (the layout of
`_npu_reshape_and_cache` and of the paged-attention kernels). `meta` is built once per step by `prepare(...)`.

`TorchOps` (plain torch, SDPA) is the reference and runs on CPU and CUDA; `NpuOps` calls torch_npu's fused ops.
"""
from __future__ import annotations

import torch

from .torch_ops import AttentionMeta, TorchOps


def get_ops(device: torch.device, dtype: torch.dtype | None = None):
    if device.type == "npu":
        from .npu_ops import NpuOps
        return NpuOps()
    return TorchOps(device, dtype)


__all__ = ["AttentionMeta", "TorchOps", "get_ops"]
