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


# ---- MoE -----------------------------------------------------------------------------------------------------
def npu_moe_gating_top_k_softmax(x, finished=None, k=1):
    """softmax over the experts, top-k -> (y [T, k] float, expert_idx [T, k] int32, row_idx [T, k] int32)."""
    calls.append("npu_moe_gating_top_k_softmax")
    _need(x.dim() == 2, "npu_moe_gating_top_k_softmax: x [T, E]")
    _need(finished is None or finished.dtype == torch.bool, "npu_moe_gating_top_k_softmax: finished bool")
    y, idx = torch.topk(torch.softmax(x.float(), -1), k, dim=-1)
    T = x.shape[0]
    row = torch.arange(T * k, dtype=torch.int32).view(k, T).t().contiguous()
    return y.to(x.dtype), idx.to(torch.int32), row


def npu_moe_gating_top_k(x, k, *, bias=None, k_group=1, group_count=1, group_select_mode=0, renorm=0, norm_type=0,
                         out_flag=False, routed_scaling_factor=1.0, eps=1e-20):
    """norm_type 1: sigmoid scores; bias added for the choice; groups ranked by max (mode 0) or top-2 sum (1),
    the best k_group kept; weights = chosen scores / (sum + eps) * routed_scaling_factor."""
    calls.append("npu_moe_gating_top_k")
    _need(x.dim() == 2 and x.dtype == torch.float32, "npu_moe_gating_top_k: x [T, E] float32 here")
    _need(norm_type == 1 and renorm == 0, "npu_moe_gating_top_k: only sigmoid with renorm 0 used")
    T, E = x.shape
    _need(E % group_count == 0 and 1 <= k_group <= group_count, "npu_moe_gating_top_k: groups")
    _need(bias is None or (bias.shape == (E,) and bias.dtype == torch.float32), "npu_moe_gating_top_k: bias [E]")
    scores = x.sigmoid()
    choice = scores if bias is None else scores + bias
    if group_count > 1:
        g = choice.view(T, group_count, E // group_count)
        gs = g.topk(2, -1).values.sum(-1) if group_select_mode == 1 else g.max(-1).values
        keep = torch.zeros_like(gs, dtype=torch.bool).scatter_(1, gs.topk(k_group, -1).indices, True)
        choice = choice.masked_fill(~keep[:, :, None].expand_as(g).reshape(T, E), float("-inf"))
    idx = choice.topk(k, -1).indices
    y = scores.gather(1, idx)
    y = y / (y.sum(-1, keepdim=True) + eps) * routed_scaling_factor
    return y, idx.to(torch.int32), (scores if out_flag else None)


def npu_moe_init_routing(x, row_idx, expert_idx, active_num):
    """(token, k) pairs sorted by expert (stable in row_idx order) -> (expanded_x [T*k, H], expanded_row_idx
    [T*k]: each source row's destination, expanded_expert_idx [T*k]: the sorted experts)."""
    calls.append("npu_moe_init_routing")
    _need(x.dim() == 2 and x.shape[0] < 2 ** 24, "npu_moe_init_routing: x [NUM_ROWS, H]")
    _need(row_idx.dtype == torch.int32 and expert_idx.dtype == torch.int32, "npu_moe_init_routing: int32 indices")
    _need(row_idx.shape == expert_idx.shape and expert_idx.shape[0] == x.shape[0],
          "npu_moe_init_routing: row_idx / expert_idx [NUM_ROWS, K]")
    T, k = expert_idx.shape
    experts = expert_idx.t().reshape(-1)             # source row r = j * T + t, the row_idx convention
    rows = row_idx.t().reshape(-1).long()
    order = torch.sort(experts.long() * (T * k) + rows, stable=True).indices
    dst_to_src = rows[order]
    src_to_dst = torch.empty_like(dst_to_src)
    src_to_dst[dst_to_src] = torch.arange(T * k)
    expanded_x = x[(dst_to_src % T)[: active_num * k]]
    return expanded_x, src_to_dst.to(torch.int32), experts[order].contiguous()


def npu_moe_compute_expert_tokens(sorted_expert_for_source_row, num_expert):
    """Cumulative row counts per expert (the group_list of group_list_type 0)."""
    calls.append("npu_moe_compute_expert_tokens")
    _need(sorted_expert_for_source_row.dtype == torch.int32, "npu_moe_compute_expert_tokens: int32 experts")
    _need(bool((sorted_expert_for_source_row[1:] >= sorted_expert_for_source_row[:-1]).all()),
          "npu_moe_compute_expert_tokens: experts must be sorted")
    counts = torch.bincount(sorted_expert_for_source_row.long(), minlength=num_expert)
    _need(counts.shape[0] == num_expert, "npu_moe_compute_expert_tokens: an expert id >= num_expert")
    return torch.cumsum(counts, 0).to(torch.int32)


def npu_grouped_matmul(x, weight, *, bias=None, scale=None, offset=None, antiquant_scale=None,
                       antiquant_offset=None, per_token_scale=None, group_list=None, activation_input=None,
                       activation_quant_scale=None, activation_quant_offset=None, split_item=0, group_type=None,
                       group_list_type=0, act_type=0, output_dtype=None, tuning_config=None):
    """split_item 2, group_type 0: one x [M, K] split into groups along M by group_list, weight [E, K, N] (x @ w
    per group) -> [y [M, N]]."""
    calls.append("npu_grouped_matmul")
    _need(isinstance(x, list) and isinstance(weight, list), "npu_grouped_matmul: x and weight are lists")
    _need(split_item in (2, 3) and group_type == 0, "npu_grouped_matmul: split_item 2/3 with group_type 0 used")
    _need(len(x) == 1 and len(weight) == 1 and weight[0].dim() == 3, "npu_grouped_matmul: one x, weight [E, K, N]")
    a, w = x[0], weight[0]
    _need(a.shape[1] == w.shape[1], f"npu_grouped_matmul: x {tuple(a.shape)} vs weight {tuple(w.shape)}")
    _need(group_list is not None and group_list.shape[0] == w.shape[0], "npu_grouped_matmul: group_list [E]")
    ends = group_list.long() if group_list_type == 0 else torch.cumsum(group_list.long(), 0)
    _need(int(ends[-1]) == a.shape[0], "npu_grouped_matmul: group_list does not cover x")
    y = torch.empty(a.shape[0], w.shape[2], dtype=a.dtype)
    start = 0
    for e, end in enumerate(ends.tolist()):
        y[start:end] = a[start:end] @ w[e]
        start = end
    return [y]


def npu_moe_finalize_routing(expanded_permuted_rows, skip1, skip2, bias, scales, expanded_src_to_dst_row,
                             export_for_source_row, drop_pad_mode=0):
    """out[i] = skip1 + skip2 + sum_k scales[i, k] * (rows[src_to_dst[i + k * T]] + bias[expert])."""
    calls.append("npu_moe_finalize_routing")
    T, k = scales.shape
    _need(expanded_src_to_dst_row.shape == (T * k,), "npu_moe_finalize_routing: expanded_src_to_dst_row [T*K]")
    _need(export_for_source_row.shape == (T, k), "npu_moe_finalize_routing: export_for_source_row [T, K]")
    _need(scales.dtype == expanded_permuted_rows.dtype, "npu_moe_finalize_routing: scales in the rows' dtype")
    dst = expanded_src_to_dst_row.long().view(k, T).t()
    out = (scales[:, :, None] * expanded_permuted_rows[dst]).sum(1)
    for s in (skip1, skip2):
        if s is not None:
            out = out + s
    return out


def module(device_name: str = "Ascend910B2") -> types.ModuleType:
    m = types.ModuleType("torch_npu")
    for name in ("npu_rms_norm", "npu_add_rms_norm", "npu_rotary_mul", "npu_swiglu", "_npu_reshape_and_cache",
                 "_npu_paged_attention", "npu_fused_infer_attention_score", "npu_format_cast",
                 "npu_moe_gating_top_k_softmax", "npu_moe_gating_top_k", "npu_moe_init_routing",
                 "npu_moe_compute_expert_tokens", "npu_grouped_matmul", "npu_moe_finalize_routing"):
        setattr(m, name, globals()[name])
    m.npu = types.SimpleNamespace(get_device_name=lambda device=None: device_name)
    m.calls = calls
    return m
