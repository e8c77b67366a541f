"""Op table for Ascend NPUs, written against torch_npu's documented fused ops.

    rms_norm       torch_npu.npu_rms_norm(x, gamma, epsilon=) -> (y, rstd)
    add_rms_norm   torch_npu.npu_add_rms_norm(x1, x2, gamma, epsilon) -> (y, rstd, x1 + x2)
    rope           torch_npu.npu_rotary_mul(x, r1, r2)  (rotate_half mode; x [1, T, N, D], r1/r2 [1, T, 1, D])
    silu_and_mul   torch_npu.npu_swiglu(x, dim=-1)      (silu of the first half times the second half)
    write_kv       torch_npu._npu_reshape_and_cache(key=, value=, key_cache=, value_cache=, slot_indices=)  (ATB)
    prefill        torch_npu.npu_fused_infer_attention_score(q, k_cache, v_cache, block_table=, input_layout="TND",
                   actual_seq_lengths=<cumulative q lens>, actual_seq_lengths_kv=<kv lens>, sparse_mode=3
                   (causal, bottom-right aligned: a cached prefix is visible) or 4 with pre_tokens for a
                   sliding window, atten_mask=<2048x2048 compressed causal mask>)
    decode         torch_npu._npu_paged_attention(query=, key_cache=, value_cache=, num_kv_heads=, num_heads=,
                   scale_value=, block_table=, context_lens=, out=)   (ATB; sliding-window layers use FIA)
    linear         torch.nn.functional.linear (a quantized weight runs its own linear, which calls
                   torch_npu.npu_weight_quant_batchmatmul: quant/weight.py)
    prepare_weights  on SoCs whose matmul wants it (Atlas 300I Duo, Ascend 310P), the linear weights are cast once
                   to FRACTAL_NZ: torch_npu.npu_format_cast(w, 29); A2/A3 (910B/910C) keep ND

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
        """Casts the dense linear weights to FRACTAL_NZ where the SoC wants it (quantized weights keep theirs; a
        tied lm_head stays ND, since the embedding lookup reads the same tensor)."""
        if not self.wants_nz_weights():
            return

        def nz(w):
            return self.npu.npu_format_cast(w, ACL_FORMAT_FRACTAL_NZ) if type(w) is torch.Tensor else w
        for lin in model.linears():
            lin.weight = nz(lin.weight)
        if not model.tied:
            model.lm_head = nz(model.lm_head)

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
