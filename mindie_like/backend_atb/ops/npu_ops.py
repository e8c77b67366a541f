"""Op table for Ascend NPUs, written against torch_npu's documented fused ops.

    rms_norm       torch_npu.npu_rms_norm(x, gamma, epsilon=) -> (y, rstd)
    add_rms_norm   torch_npu.npu_add_rms_norm(x1, x2, gamma, epsilon) -> (y, rstd, x1 + x2)
    rope           torch_npu.npu_rotary_mul(x, r1, r2)  (rotate_half mode; x [1, T, N, D], r1/r2 [1, T, 1, D]);
                   the interleaved (GPT-J) layout with rotary_mode="interleave" (GLM-4, DeepSeek)
    MLA            see the MLA section below: _npu_reshape_and_cache into latent / rope-key caches, FIA's
                   query_rope / key_rope (absorbed) form
    silu_and_mul   torch_npu.npu_swiglu(x, dim=-1)      (silu of the first half times the second half)
    write_kv       torch_npu._npu_reshape_and_cache(key=, value=, key_cache=, value_cache=, slot_indices=)  (ATB)
    prefill        torch_npu.npu_fused_infer_attention_score(q, k_cache, v_cache, block_table=, input_layout="TND",
                   actual_seq_lengths=<cumulative q lens>, actual_seq_lengths_kv=<kv lens>, sparse_mode=3
                   (causal, bottom-right aligned: a cached prefix is visible) or 4 with pre_tokens for a
                   sliding window, atten_mask=<2048x2048 compressed causal mask>)
    decode         torch_npu._npu_paged_attention(query=, key_cache=, value_cache=, num_kv_heads=, num_heads=,
                   scale_value=, block_table=, context_lens=, out=)   (ATB; sliding-window layers use FIA)
    linear         torch.nn.functional.linear (weight-only quantized variants will call
                   torch_npu.npu_weight_quant_batchmatmul, issue 9)
    prepare_weights  on SoCs whose matmul wants it (Atlas 300I Duo, Ascend 310P), the linear weights are cast once
                   to FRACTAL_NZ: torch_npu.npu_format_cast(w, 29); A2/A3 (910B/910C) keep ND. Dense MoE experts
                   are stacked once, transposed, for the grouped matmul (the per-expert weights become views)
    moe_select     softmax top-k without groups or bias: torch_npu.npu_moe_gating_top_k_softmax(x, finished=None,
                   k=) (norm_topk_prob and the scaling applied after); sigmoid with norm_topk_prob (DeepSeek V3,
                   GLM-4.5): torch_npu.npu_moe_gating_top_k(x, k=, bias=, k_group=, group_count=,
                   group_select_mode=1 (groups ranked by their top-2 sum), renorm=0, norm_type=1 (sigmoid),
                   out_flag=False, routed_scaling_factor=, eps=1e-20); other combinations: the plain-torch reference
    moe_experts    torch_npu.npu_moe_init_routing(x, row_idx, expert_idx, active_num) (pairs sorted by expert),
                   npu_moe_compute_expert_tokens(sorted experts, num_expert) (cumulative counts),
                   npu_grouped_matmul([x], [w13 [E, H, 2I]], group_list=, split_item=2, group_type=0,
                   group_list_type=0), npu_swiglu, npu_grouped_matmul(... w2 [E, I, H] ...),
                   npu_moe_finalize_routing(rows, skip1=None, skip2=None, bias=None, scales=routing weights,
                   expanded_src_to_dst_row=, export_for_source_row=expert ids). Quantized experts: the per-expert
                   reference path (weight-only quantized linears). Expert parallelism: another rank's pairs get
                   weight 0 and a local expert id (computed, then dropped by the zero scale)

KV cache layout [num_blocks, block_size, num_kv_heads, head_dim] is the one `_npu_reshape_and_cache` and
`_npu_paged_attention` take; FIA reads it viewed as [num_blocks, block_size, num_kv_heads * head_dim].
The vllm-ascend pins (CANN 9.1, torch_npu 2.10) are the reference set; the ATB paged kernels want 128-token blocks.
Only the argument names and shapes are checked without hardware (tests/unit/backend_atb/test_npu_ops.py).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..device import torch_npu_module
from .torch_moe import fused_experts, select_experts
from .torch_ops import AttentionMeta

_MASK_SIZE = 2048     # FIA sparse_mode 3/4 takes a compressed 2048x2048 mask
ACL_FORMAT_FRACTAL_NZ = 29
NZ_SOCS = ("310P",)   # SoC names (torch_npu.npu.get_device_name) whose matmul reads FRACTAL_NZ weights


def _npu():
    mod = torch_npu_module()
    if mod is None:
        raise RuntimeError("torch_npu is not importable: the NPU op table needs torch_npu (and CANN)")
    return mod


class NpuOps:
    name = "npu"

    def __init__(self):
        self.npu = _npu()
        self._mask = None

    # ---- norms, rope, activation, linear -------------------------------------------------------------------
    def rms_norm(self, x, w, eps):
        return self.npu.npu_rms_norm(x.contiguous(), w, epsilon=eps)[0]

    def add_rms_norm(self, x, residual, w, eps):
        y, _, added = self.npu.npu_add_rms_norm(x, residual, w, eps)
        return y, added

    @staticmethod
    def rope_tables(cos_sin_cache: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype):
        """Full-width cos/sin [1, T, 1, D] (BS1D broadcast against q/k viewed as BSND)."""
        cs = cos_sin_cache.index_select(0, positions).to(dtype)
        half = cs.shape[-1] // 2
        cos, sin = cs[:, :half], cs[:, half:]
        cos = torch.cat((cos, cos), dim=-1)[None, :, None, :].contiguous()
        sin = torch.cat((sin, sin), dim=-1)[None, :, None, :].contiguous()
        return cos, sin

    def rope_heads(self, x, cos, sin):
        """x [T, N, D] viewed as BSND [1, T, N, D]; cos/sin [1, T, 1, D]."""
        return self.npu.npu_rotary_mul(x.contiguous().unsqueeze(0), cos, sin).view(x.shape)

    def rope_interleaved(self, x, cos, sin):
        """GPT-J layout over the first 2*cos.shape[-1] dims of x [T, N, D] (the rest pass): npu_rotary_mul's
        interleave mode with cos/sin [T, 1, rd/2] (interleaved_tables) repeated per pair, viewed as BSND."""
        rd = 2 * cos.shape[-1]
        r1 = cos.repeat_interleave(2, dim=-1).unsqueeze(0).contiguous()
        r2 = sin.repeat_interleave(2, dim=-1).unsqueeze(0).contiguous()
        rot = self.npu.npu_rotary_mul(x[..., :rd].contiguous().unsqueeze(0), r1, r2, rotary_mode="interleave")[0]
        return rot if rd == x.shape[-1] else torch.cat((rot, x[..., rd:]), dim=-1)

    def rope(self, q, k, cos, sin):
        return self.rope_heads(q, cos, sin), self.rope_heads(k, cos, sin)

    def silu_and_mul(self, x):
        return self.npu.npu_swiglu(x.contiguous(), dim=-1)

    @staticmethod
    def linear(x, w, b=None):
        return F.linear(x, w, b)

    def wants_nz_weights(self) -> bool:
        name = self.npu.npu.get_device_name()
        return any(soc in name for soc in NZ_SOCS)

    def prepare_weights(self, model) -> None:
        """Stacks dense MoE experts for the grouped matmul; casts the dense linear weights to FRACTAL_NZ where the
        SoC wants it (quantized weights keep theirs; a tied lm_head stays ND, since the embedding lookup reads the
        same tensor)."""
        from ..layers.moe import FusedMoE
        for c in model.components():
            if isinstance(c, FusedMoE):
                self.stack_experts(c)
        if not self.wants_nz_weights():
            return

        def nz(w):
            return self.npu.npu_format_cast(w, ACL_FORMAT_FRACTAL_NZ) if type(w) is torch.Tensor else w
        for lin in model.linears():
            lin.weight = nz(lin.weight)
        if not model.tied:
            model.lm_head = nz(model.lm_head)

    # ---- MoE -------------------------------------------------------------------------------------------------
    @staticmethod
    def stack_experts(layer) -> None:
        """w13 [E, H, 2I] and w2 [E, I, H] (x @ w per group), once; the per-expert weights become their views."""
        w13, w2 = layer.expert_weights()
        if not all(type(w) is torch.Tensor for w in w13 + w2):
            return          # quantized experts: the per-expert path
        w13t = torch.stack([w.t() for w in w13]).contiguous()
        w2t = torch.stack([w.t() for w in w2]).contiguous()
        for e, (a, b) in enumerate(zip(layer.w13, layer.w2)):
            a.weight, b.weight = w13t[e].t(), w2t[e].t()
        layer.npu_weights = (w13t, w2t)

    def moe_select(self, logits, spec, correction_bias=None):
        if spec.scoring == "softmax" and spec.n_group == 1 and correction_bias is None:
            y, ids, _ = self.npu.npu_moe_gating_top_k_softmax(logits.float().contiguous(), finished=None, k=spec.top_k)
            if spec.norm_topk_prob:
                y = y / y.sum(dim=-1, keepdim=True)
            return y * spec.routed_scaling_factor if spec.routed_scaling_factor != 1.0 else y, ids.long()
        if spec.scoring == "sigmoid" and spec.norm_topk_prob:
            grouped = spec.n_group > 1
            y, ids, _ = self.npu.npu_moe_gating_top_k(
                logits.float().contiguous(), k=spec.top_k,
                bias=None if correction_bias is None else correction_bias.float(),
                k_group=spec.topk_group if grouped else 1, group_count=spec.n_group if grouped else 1,
                group_select_mode=1 if grouped else 0, renorm=0, norm_type=1, out_flag=False,
                routed_scaling_factor=spec.routed_scaling_factor, eps=1e-20)
            return y, ids.long()
        return select_experts(logits, spec, correction_bias)

    def moe_experts(self, x, weights, ids, layer):
        if layer.npu_weights is None:
            w13, w2 = layer.expert_weights()
            return fused_experts(self, x, weights, ids, w13, w2, layer.first)
        w13t, w2t = layer.npu_weights
        T, k = ids.shape
        local = ids - layer.first
        if layer.n_local != layer.num_experts:      # expert parallelism: another rank's pairs count for nothing
            inside = (local >= 0) & (local < layer.n_local)
            weights = weights * inside
            local = torch.where(inside, local, torch.zeros_like(local))
        local = local.to(torch.int32).contiguous()
        row_idx = torch.arange(T * k, dtype=torch.int32, device=x.device).view(k, T).t().contiguous()
        rows, src_to_dst, sorted_experts = self.npu.npu_moe_init_routing(x.contiguous(), row_idx, local, T)
        cumulative = self.npu.npu_moe_compute_expert_tokens(sorted_experts, layer.n_local).to(torch.int64)
        h = self.npu.npu_grouped_matmul([rows], [w13t], group_list=cumulative, split_item=2, group_type=0,
                                        group_list_type=0)[0]
        h = self.npu.npu_swiglu(h.contiguous(), dim=-1)
        y = self.npu.npu_grouped_matmul([h], [w2t], group_list=cumulative, split_item=2, group_type=0,
                                        group_list_type=0)[0]
        return self.npu.npu_moe_finalize_routing(y, skip1=None, skip2=None, bias=None, scales=weights.to(y.dtype),
                                                 expanded_src_to_dst_row=src_to_dst, export_for_source_row=local)

    # ---- KV cache and attention ----------------------------------------------------------------------------
    def write_kv(self, k, v, k_cache, v_cache, slot_mapping):
        self.npu._npu_reshape_and_cache(key=k.contiguous(), value=v.contiguous(), key_cache=k_cache,
                                        value_cache=v_cache, slot_indices=slot_mapping)

    def _causal_mask(self, device):
        if self._mask is None or self._mask.device != device:
            self._mask = torch.triu(torch.ones(_MASK_SIZE, _MASK_SIZE, dtype=torch.bool, device=device), diagonal=1)
        return self._mask

    def prepare(self, *, query_lens, context_lens, block_tables, slot_mapping, block_size, scale,
                windows: set) -> AttentionMeta:
        is_decode = all(q == 1 for q in query_lens)
        meta = AttentionMeta(list(query_lens), list(context_lens), block_size, slot_mapping.to(torch.int32),
                             block_tables.to(torch.int32).contiguous(), is_decode, scale)
        cum, acc = [], 0
        for q in query_lens:
            acc += q
            cum.append(acc)
        meta.extra["cu_q"] = cum                                   # TND: cumulative query lengths
        meta.extra["kv_lens"] = list(context_lens)                 # per-sequence KV lengths (paged)
        meta.extra["context_lens_cpu"] = torch.tensor(context_lens, dtype=torch.int32)   # ATB wants a host tensor
        return meta

    def attention_prefill(self, q, k, v, k_cache, v_cache, meta: AttentionMeta, window: Optional[int] = None):
        T, Hq, D = q.shape
        nb, bs, Hk, _ = k_cache.shape
        kw = {}
        if window is not None:
            kw = dict(sparse_mode=4, pre_tokens=window - 1, next_tokens=0)
        else:
            kw = dict(sparse_mode=3)
        out, _ = self.npu.npu_fused_infer_attention_score(
            q.contiguous(), k_cache.view(nb, bs, Hk * D), v_cache.view(nb, bs, Hk * D),
            atten_mask=self._causal_mask(q.device), block_table=meta.block_tables, input_layout="TND",
            block_size=bs, actual_seq_lengths=meta.extra["cu_q"], actual_seq_lengths_kv=meta.extra["kv_lens"],
            num_key_value_heads=Hk, num_heads=Hq, scale=meta.scale, **kw)
        return out.view(T, Hq * D)

    def attention_decode(self, q, k_cache, v_cache, meta: AttentionMeta, window: Optional[int] = None):
        if window is not None:      # the ATB paged kernel has no window: the varlen kernel handles it
            return self.attention_prefill(q, None, None, k_cache, v_cache, meta, window)
        B, Hq, D = q.shape
        Hk = k_cache.shape[2]
        out = torch.empty_like(q)
        self.npu._npu_paged_attention(query=q.contiguous(), key_cache=k_cache, value_cache=v_cache,
                                      num_kv_heads=Hk, num_heads=Hq, scale_value=meta.scale,
                                      block_table=meta.block_tables, context_lens=meta.extra["context_lens_cpu"],
                                      out=out)
        return out.view(B, Hq * D)

    # ---- MLA (layers/mla.py) -------------------------------------------------------------------------------
    # Cache per layer: latent [blocks, block_size, 1, kv_lora_rank] and rope key [blocks, block_size, 1, rope]
    # (the key / value pair of _npu_reshape_and_cache, widths differing). Attention is FIA's MLA form: query =
    # q folded into the latent space (N heads x kv_lora_rank), key = value = the latent cache (one KV head),
    # query_rope / key_rope = the rope parts, added into the scores.
    def mla_write_cache(self, latent, k_pe, latent_cache, rope_cache, slot_mapping):
        T = latent.shape[0]
        self.npu._npu_reshape_and_cache(key=latent.reshape(T, 1, -1).contiguous(),
                                        value=k_pe.reshape(T, 1, -1).contiguous(), key_cache=latent_cache,
                                        value_cache=rope_cache, slot_indices=slot_mapping)

    def _mla_fia(self, q_lat, q_pe, latent_cache, rope_cache, meta, scale):
        nb, bs, _, r = latent_cache.shape
        lat = latent_cache.view(nb, bs, r)
        out, _ = self.npu.npu_fused_infer_attention_score(
            q_lat.contiguous(), lat, lat, query_rope=q_pe.contiguous(),
            key_rope=rope_cache.view(nb, bs, rope_cache.shape[-1]), atten_mask=self._causal_mask(q_lat.device),
            block_table=meta.block_tables, input_layout="TND", block_size=bs,
            actual_seq_lengths=meta.extra["cu_q"], actual_seq_lengths_kv=meta.extra["kv_lens"],
            num_key_value_heads=1, num_heads=q_lat.shape[1], scale=scale, sparse_mode=3)
        return out

    def mla_attention_decode(self, q_lat, q_pe, latent_cache, rope_cache, meta, scale):
        return self._mla_fia(q_lat, q_pe, latent_cache, rope_cache, meta, scale)

    def mla_attention_prefill(self, q_nope, q_pe, latent, k_pe, latent_cache, rope_cache, kv_b, meta, m):
        """Prefill in the absorbed form too (one paged kernel over the cached prefix and the new tokens):
        q_nope through W_UK, FIA over the latents, the result through W_UV -> [T, H, dv]."""
        H, dn, r = m.heads, m.nope, m.kv_lora_rank
        kvb = kv_b.view(H, dn + m.v_dim, r)
        q_lat = torch.bmm(q_nope.transpose(0, 1), kvb[:, :dn, :].to(q_nope.dtype)).transpose(0, 1)
        o_lat = self._mla_fia(q_lat, q_pe, latent_cache, rope_cache, meta, m.scale)
        return torch.bmm(o_lat.transpose(0, 1), kvb[:, dn:, :].transpose(1, 2).to(o_lat.dtype)).transpose(0, 1)
