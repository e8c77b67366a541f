"""A stand-in torch_npu module for CPU tests of the NPU op table.

Each function has the documented signature (argument names, keyword-only parts), checks the shapes, dtypes and
layouts the docs require, and computes the documented result with plain torch, so a wrong argument name, a
wrong layout or a wrong meaning (cumulative vs per-sequence lengths) fails without hardware. `calls` records
every call by name.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F

calls: list[str] = []
_INT_MAX = 2147483647


def _need(cond, msg):
    if not cond:
        raise ValueError("fake torch_npu: " + msg)


def npu_rms_norm(self, gamma, epsilon=1e-06):
    calls.append("npu_rms_norm")
    _need(self.is_contiguous(), "npu_rms_norm: input must be contiguous")
    _need(gamma.shape == self.shape[-gamma.dim():], f"npu_rms_norm: gamma {tuple(gamma.shape)} vs x {tuple(self.shape)}")
    xf = self.float()
    rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + epsilon)
    return (xf * rstd).to(self.dtype) * gamma, rstd


def npu_add_rms_norm(x1, x2, gamma, epsilon=1e-06):
    calls.append("npu_add_rms_norm")
    _need(x1.shape == x2.shape, "npu_add_rms_norm: x1 and x2 shapes differ")
    x = x1 + x2
    y, rstd = npu_rms_norm(x.contiguous(), gamma, epsilon)
    calls.pop()
    return y, rstd, x


def npu_rotary_mul(input, r1, r2, rotary_mode="half"):
    calls.append("npu_rotary_mul")
    _need(input.dim() == 4 and r1.dim() == 4 and r2.dim() == 4, "npu_rotary_mul: 4-D tensors only")
    _need(rotary_mode in ("half", "interleave"), "npu_rotary_mul: rotary_mode 'half' or 'interleave'")
    _need(r1.shape == r2.shape and r1.shape[-1] == input.shape[-1], "npu_rotary_mul: r1/r2 width")
    _need(input.shape[-1] % 2 == 0, "npu_rotary_mul: D must be even")
    for a, b in zip(r1.shape, input.shape):
        _need(a in (1, b), f"npu_rotary_mul: r1 {tuple(r1.shape)} does not broadcast to {tuple(input.shape)}")
    if rotary_mode == "interleave":
        x1, x2 = input[..., ::2], input[..., 1::2]
        return r1 * input + r2 * torch.stack((-x2, x1), dim=-1).flatten(-2)
    x1, x2 = torch.chunk(input, 2, -1)
    return r1 * input + r2 * torch.cat((-x2, x1), dim=-1)


def npu_swiglu(input, dim=-1):
    calls.append("npu_swiglu")
    _need(input.is_contiguous(), "npu_swiglu: input must be contiguous")
    _need(input.shape[dim] % 2 == 0, "npu_swiglu: odd split dimension")
    a, b = torch.chunk(input, 2, dim=dim)
    return F.silu(a) * b


def _npu_reshape_and_cache(key, value, key_cache, value_cache, slot_indices):
    calls.append("_npu_reshape_and_cache")
    # key and value may differ in width (MLA: latent and rope key), each matching its own cache
    _need(key.dim() == 3 and value.dim() == 3 and value.shape[:2] == key.shape[:2],
          "reshape_and_cache: key/value [tokens, heads, dim]")
    _need(key_cache.dim() == 4 and key_cache.shape[2:] == key.shape[1:] and value_cache.shape[2:] == value.shape[1:]
          and value_cache.shape[:2] == key_cache.shape[:2], "reshape_and_cache: cache [blocks, block_size, heads, dim]")
    _need(key.is_contiguous() and value.is_contiguous(), "reshape_and_cache: contiguous key/value")
    _need(slot_indices.dtype == torch.int32 and slot_indices.shape == key.shape[:1], "reshape_and_cache: slots int32 [T]")
    idx = slot_indices.long()
    key_cache.view(-1, *key.shape[1:]).index_copy_(0, idx, key)
    value_cache.view(-1, *value.shape[1:]).index_copy_(0, idx, value)


def _gather(cache, table_row, length):
    bs = cache.shape[1]
    nb = (length + bs - 1) // bs
    return cache[table_row[:nb].long()].reshape(nb * bs, *cache.shape[2:])[:length]


def _attend(q, k, v, mask, scale):
    """q [Lq, H, D], k/v [Lk, Hk, D], mask [Lq, Lk] bool (True = visible)."""
    g = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(g, dim=1)
    v = v.repeat_interleave(g, dim=1)
    s = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale
    s = s.masked_fill(~mask[None], float("-inf"))
    return torch.einsum("hqk,khd->qhd", s.softmax(-1), v.float()).to(q.dtype)


def _npu_paged_attention(query, key_cache, value_cache, num_kv_heads, num_heads, scale_value, block_table,
                         context_lens, out, *, workspace=None):
    calls.append("_npu_paged_attention")
    B, H, D = query.shape
    _need(H == num_heads and key_cache.shape[2] == num_kv_heads and key_cache.shape[3] == D,
          "paged_attention: heads / cache layout [blocks, block_size, kv_heads, dim]")
    _need(block_table.dtype == torch.int32 and block_table.shape[0] == B, "paged_attention: block_table int32 [B, n]")
    _need(context_lens.dtype == torch.int32 and context_lens.device.type == "cpu" and context_lens.shape == (B,),
          "paged_attention: context_lens int32 host tensor [B]")
    _need(out.shape == query.shape, "paged_attention: out shape")
    for b in range(B):
        L = int(context_lens[b])
        k = _gather(key_cache, block_table[b], L)
        v = _gather(value_cache, block_table[b], L)
        out[b] = _attend(query[b:b + 1], k, v, torch.ones(1, L, dtype=torch.bool), scale_value)[0]


def npu_fused_infer_attention_score(query, key, value, *, pse_shift=None, atten_mask=None, actual_seq_lengths=None,
                                    actual_seq_lengths_kv=None, dequant_scale1=None, quant_scale1=None,
                                    dequant_scale2=None, quant_scale2=None, quant_offset2=None, antiquant_scale=None,
                                    antiquant_offset=None, block_table=None, query_padding_size=None,
                                    kv_padding_size=None, key_antiquant_scale=None, key_antiquant_offset=None,
                                    value_antiquant_scale=None, value_antiquant_offset=None, key_shared_prefix=None,
                                    value_shared_prefix=None, actual_shared_prefix_len=None, query_rope=None,
                                    key_rope=None, key_rope_antiquant_scale=None, num_heads=1, scale=1.0,
                                    pre_tokens=_INT_MAX, next_tokens=_INT_MAX, input_layout="BSH",
                                    num_key_value_heads=0, sparse_mode=0, inner_precise=0, block_size=0,
                                    antiquant_mode=0, softmax_lse_flag=False, key_antiquant_mode=0,
                                    value_antiquant_mode=0):
    calls.append("npu_fused_infer_attention_score")
    _need(input_layout == "TND", "FIA: only the TND (varlen) layout is used here")
    _need(query.is_contiguous() and query.dim() == 3 and query.shape[1] == num_heads, "FIA: query [T, N, D]")
    _need(block_table is not None and block_table.dtype == torch.int32, "FIA: paged KV needs an int32 block_table")
    _need(key.dim() == 3 and key.shape[1] == block_size and value.shape == key.shape,
          "FIA: paged key/value [blocks, block_size, kv_heads * dim]")
    T, N, D = query.shape
    Hk = num_key_value_heads or N
    _need(key.shape[2] == Hk * D, "FIA: key width != num_key_value_heads * head_dim")
    if query_rope is not None:      # MLA: scores = q.k + q_rope.k_rope, one KV head, value = key
        _need(key_rope is not None and Hk == 1 and query_rope.shape[:2] == query.shape[:2]
              and query_rope.is_contiguous() and key_rope.dim() == 3 and key_rope.shape[:2] == key.shape[:2],
              "FIA MLA: query_rope [T, N, Dr], key_rope [blocks, block_size, Dr], one KV head")
        Dr = query_rope.shape[2]
        query = torch.cat((query, query_rope), dim=-1)
        value = torch.cat((value, torch.zeros(*value.shape[:2], Dr, dtype=value.dtype)), dim=-1)
        key = torch.cat((key, key_rope), dim=-1)
        out, lse = npu_fused_infer_attention_score(
            query, key, value, atten_mask=atten_mask, actual_seq_lengths=actual_seq_lengths,
            actual_seq_lengths_kv=actual_seq_lengths_kv, block_table=block_table, num_heads=num_heads, scale=scale,
            pre_tokens=pre_tokens, next_tokens=next_tokens, input_layout=input_layout, num_key_value_heads=1,
            sparse_mode=sparse_mode, block_size=block_size)
        calls.pop()
        return out[..., :D].contiguous(), lse
    _need(sparse_mode in (3, 4), "FIA: causal modes 3 (rightDownCausal) / 4 (band) expected")
    _need(atten_mask is not None and atten_mask.dtype == torch.bool and tuple(atten_mask.shape) == (2048, 2048),
          "FIA: sparse_mode 3/4 takes the compressed 2048x2048 bool mask")
    cu = list(actual_seq_lengths)
    kv = list(actual_seq_lengths_kv)
    _need(len(cu) == len(kv) == block_table.shape[0], "FIA: one length per sequence")
    _need(all(b >= a for a, b in zip([0] + cu, cu)) and cu[-1] == T, "FIA: TND query lengths must be cumulative")
    k4 = key.view(key.shape[0], block_size, Hk, D)
    v4 = value.view(value.shape[0], block_size, Hk, D)
    out = torch.empty_like(query)
    start = 0
    for i, (end, L) in enumerate(zip(cu, kv)):
        q_len = end - start
        _need(L >= q_len, "FIA: kv length shorter than query length")
        qpos = torch.arange(L - q_len, L)[:, None]
        kpos = torch.arange(L)[None, :]
        mask = kpos <= qpos + (0 if sparse_mode == 3 else min(next_tokens, _INT_MAX))
        if sparse_mode == 4:
            mask = (kpos <= qpos) & (kpos >= qpos - pre_tokens)
        out[start:end] = _attend(query[start:end], _gather(k4, block_table[i], L), _gather(v4, block_table[i], L),
                                 mask, scale)
        start = end
    return out, torch.empty(0)


def npu_format_cast(input, acl_format):
    """The fake keeps ND storage (plain torch cannot hold NZ); it checks what the real op requires."""
    calls.append("npu_format_cast")
    _need(isinstance(acl_format, int), "npu_format_cast: acl_format is an int (29 = FRACTAL_NZ)")
    _need(input.dim() >= 2, "npu_format_cast: FRACTAL_NZ needs a matrix")
    return input.clone()


def module(device_name: str = "Ascend910B2") -> types.ModuleType:
    m = types.ModuleType("torch_npu")
    for name in ("npu_rms_norm", "npu_add_rms_norm", "npu_rotary_mul", "npu_swiglu", "_npu_reshape_and_cache",
                 "_npu_paged_attention", "npu_fused_infer_attention_score", "npu_format_cast"):
        setattr(m, name, globals()[name])
    m.npu = types.SimpleNamespace(get_device_name=lambda device=None: device_name)
    m.calls = calls
    return m
