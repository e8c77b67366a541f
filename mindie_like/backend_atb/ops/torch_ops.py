"""Plain-torch op table: the reference implementation, used on CPU and CUDA (SDPA for attention)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from .torch_moe import fused_experts, select_experts


@dataclass
class AttentionMeta:
    """Everything attention needs for one step, built once per step (not per layer)."""
    query_lens: list[int]
    context_lens: list[int]
    block_size: int
    slot_mapping: torch.Tensor                    # [T] int64 on device
    block_tables: torch.Tensor                    # [B, max_blocks] int32 on device
    is_decode: bool
    scale: float
    # reference implementation's precomputed views
    # decode: flat KV slots to gather [B, L] and a mask [B, 1, 1, L] (None when not needed)
    decode_slots: Optional[torch.Tensor] = None
    decode_mask: Optional[torch.Tensor] = None
    decode_window_masks: dict = field(default_factory=dict)   # window -> mask
    # prefill: per sequence (q_start, q_end, kv_slots or None when the sequence has no cached prefix)
    prefill_seqs: list = field(default_factory=list)
    prefill_masks: dict = field(default_factory=dict)         # (seq index, window) -> bool mask or None
    extra: dict = field(default_factory=dict)                 # per-implementation state (NPU: seq len tensors)


def _causal_mask(q_len: int, ctx_len: int, window: Optional[int], device) -> torch.Tensor:
    """[q_len, ctx_len] bool, True where query i (absolute position ctx_len - q_len + i) may see key j."""
    qpos = torch.arange(ctx_len - q_len, ctx_len, device=device)[:, None]
    kpos = torch.arange(ctx_len, device=device)[None, :]
    m = kpos <= qpos
    if window is not None:
        m &= kpos > qpos - window
    return m


class TorchOps:
    name = "torch"

    def __init__(self, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None):
        # CPU: a step's active experts split over torch's thread count, each matmul single-threaded
        # (torch_moe._run_split): 1.3-1.4x decode at 16 streams on 2 quiet cores (benchmarks/bench_moe.py)
        self.moe_expert_threads = True
        self._gemv = None
        self._bf16_attention = False
        self._bf16_dot = None   # (kernel, isa, max rows): bf16 dot products (CPUs with AVX512-BF16, bf16 models)
        self._f32 = None        # own float32 kernels (cpu_kernels.py: RMSNorm, decode attention, silu*up), CPUs
                                # without native bf16
        if device is not None and device.type == "cpu":
            from .. import cpu_kernels
            mod = cpu_kernels.load() if cpu_kernels.wanted() else None
            if mod is not None:
                self._f32 = mod
                self.name = "torch+cpu_kernels"
                if dtype == torch.bfloat16:
                    self._gemv = mod.bf16_linear
                    self.name = "torch+cpu_kernels(bf16gemv)"
            elif dtype == torch.bfloat16:
                self._set_bf16_dot(cpu_kernels)

    def _set_bf16_dot(self, cpu_kernels) -> None:
        """bf16 weights on CPUs with native bf16: the own dot-product kernel for up to BF16_DOT_MAX_ROWS rows."""
        mod = cpu_kernels.load()
        isa = cpu_kernels.bf16_isa(mod) if mod is not None else "none"
        self._bf16_dot = None
        if isa != "none":
            self._bf16_dot = (mod.bf16_dot_linear, cpu_kernels.BF16_ISAS.index(isa), cpu_kernels.BF16_DOT_MAX_ROWS)
            self.name = f"torch+cpu_kernels(bf16dot:{isa})"
            self._bf16_attention = cpu_kernels.runnable()        # the decode attention kernel is AVX2 code

    # ---- norms, rope, activation, linear -------------------------------------------------------------------
    def _own_norm(self, x: torch.Tensor, w: torch.Tensor) -> bool:
        return (self._f32 is not None and x.dim() == 2 and x.dtype == torch.float32 and w.dtype == torch.float32
                and x.is_contiguous())

    def rms_norm(self, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        if self._own_norm(x, w):
            return self._f32.rms_norm_f32(x, w, eps)
        # one fused kernel; in half precision it accumulates in float32 and rounds once (HF rounds twice:
        # normalised value, then times the weight), which is at least as accurate
        return F.rms_norm(x, (x.shape[-1],), w, eps)

    def add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor, w: torch.Tensor, eps: float):
        if self._own_norm(x, w) and residual.is_contiguous() and residual.dtype == torch.float32:
            return self._f32.add_rms_norm_f32(x, residual, w, eps)
        residual = x + residual
        return self.rms_norm(residual, w, eps), residual

    @staticmethod
    def rope_heads(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Neox-style (rotate_half) rotary embedding of x [T, N, D]: x*cos + cat(x2, x1)*sin_signed, where
        `rope_tables` gives cos = cat(c, c) and sin_signed = cat(-s, s), both [T, 1, D] (three kernels)."""
        half = x.shape[-1] // 2
        return torch.addcmul(x * cos, torch.cat((x[..., half:], x[..., :half]), dim=-1), sin)

    @classmethod
    def rope(cls, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        return cls.rope_heads(q, cos, sin), cls.rope_heads(k, cos, sin)

    @staticmethod
    def rope_tables(cos_sin_cache: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype):
        """cos_sin_cache [max_pos, D] float32 = cat(cos, sin) of the D/2 frequencies -> per-step full-width
        (cos, signed sin), each [T, 1, D] in the activation dtype."""
        cs = cos_sin_cache.index_select(0, positions)
        half = cs.shape[-1] // 2
        c, s = cs[:, :half], cs[:, half:]
        return (torch.cat((c, c), dim=-1).to(dtype)[:, None, :],
                torch.cat((-s, s), dim=-1).to(dtype)[:, None, :])

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        if self._f32 is not None and x.dtype == torch.float32 and x.dim() == 2 and x.is_contiguous():
            return self._f32.silu_mul_f32(x)
        half = x.shape[-1] // 2
        return F.silu(x[..., :half]) * x[..., half:]

    def linear(self, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [M, K] @ w[N, K].T + b. Small batches of bf16 on CPUs without native bf16 use the C++ GEMV.
        Weight-only int8/int4 weights (quant/ QuantizedWeight) run their own kernels."""
        if getattr(w, "is_quantized_weight", False):
            return w.linear(x, b)
        if self._gemv is not None and x.shape[0] <= 8 and w.dtype == torch.bfloat16:
            return self._gemv(x, w, b)
        if self._own_bf16_dot(x, w):
            kernel, isa, _ = self._bf16_dot
            return kernel(x, w, b, isa, False)
        if x.dtype != w.dtype:          # float32 activations on half-precision weights (W16A32)
            y = F.linear(x.to(w.dtype), w).to(x.dtype)
            return y if b is None else y + b
        return F.linear(x, w, b)

    def logits(self, x: torch.Tensor, w) -> torch.Tensor:
        """float32 logits x @ w.T (the lm_head). The bf16 dot-product kernel writes its float32 sums as they are:
        no bf16 rounding of the logits and no [rows, vocab] conversion copies (~10 MB each at 16 rows)."""
        if self._own_bf16_dot(x, w):
            kernel, isa, _ = self._bf16_dot
            return kernel(x, w, None, isa, True)
        return self.linear(x, w).float()

    def _own_bf16_dot(self, x: torch.Tensor, w) -> bool:
        return (self._bf16_dot is not None and isinstance(w, torch.Tensor) and w.dtype == torch.bfloat16
                and x.dim() == 2 and x.shape[0] <= self._bf16_dot[2] and w.is_contiguous())

    # ---- MoE (ops/torch_moe.py) -------------------------------------------------------------------------------
    @staticmethod
    def moe_select(logits: torch.Tensor, spec, correction_bias: Optional[torch.Tensor] = None):
        """Router logits [T, E] -> (weights [T, k] float32, expert ids [T, k] int64)."""
        return select_experts(logits, spec, correction_bias)

    def moe_experts(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, layer) -> torch.Tensor:
        """This rank's experts (`layer`: a layers.moe.FusedMoE) applied to the tokens routed to them -> [T, H]."""
        w13, w2 = layer.expert_weights()
        workers = torch.get_num_threads() if x.device.type == "cpu" and self.moe_expert_threads else 1
        return fused_experts(self, x, weights, ids, w13, w2, layer.first, workers)

    # ---- KV cache and attention ----------------------------------------------------------------------------
    @staticmethod
    def write_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 slot_mapping: torch.Tensor) -> None:
        nkv, hd = k_cache.shape[-2], k_cache.shape[-1]
        k_cache.view(-1, nkv, hd).index_copy_(0, slot_mapping, k)
        v_cache.view(-1, nkv, hd).index_copy_(0, slot_mapping, v)

    def prepare(self, *, query_lens, context_lens, block_tables, slot_mapping, block_size, scale,
                windows: set) -> AttentionMeta:
        """Builds the step's attention metadata. `windows`: the set of sliding windows used by layers (None = full)."""
        device = slot_mapping.device
        is_decode = all(q == 1 for q in query_lens)
        meta = AttentionMeta(list(query_lens), list(context_lens), block_size, slot_mapping, block_tables,
                             is_decode, scale)
        offs = torch.arange(block_size, device=device)
        if is_decode:
            B = len(context_lens)
            L = max(context_lens)
            nb = (L + block_size - 1) // block_size
            slots = (block_tables[:, :nb].long()[:, :, None] * block_size + offs).reshape(B, nb * block_size)[:, :L]
            meta.decode_slots = slots.contiguous()
            ctx = torch.tensor(context_lens, device=device)[:, None]
            kpos = torch.arange(L, device=device)[None, :]
            for w in windows:
                uniform = all(c == L for c in context_lens)
                if w is None:
                    m = None if uniform else (kpos < ctx)
                else:
                    m = (kpos < ctx) & (kpos > ctx - 1 - w)
                meta.decode_window_masks[w] = None if m is None else m[:, None, None, :]
            return meta
        start = 0
        for i, (ql, cl) in enumerate(zip(query_lens, context_lens)):
            if ql == cl:
                slots = None          # no cached prefix: attend over this step's own k, v
            else:
                nb = (cl + block_size - 1) // block_size
                slots = (block_tables[i, :nb].long()[:, None] * block_size + offs).reshape(-1)[:cl]
            meta.prefill_seqs.append((start, start + ql, slots))
            for w in windows:
                if ql == cl and (w is None or w >= cl):
                    meta.prefill_masks[(i, w)] = None      # plain causal
                elif ql == 1 and (w is None or w >= cl):
                    meta.prefill_masks[(i, w)] = "all"     # a single query sees every key
                else:
                    meta.prefill_masks[(i, w)] = _causal_mask(ql, cl, w, device)
            start += ql
        return meta

    @staticmethod
    def _sdpa(q, k, v, mask, causal, scale):
        """q [B, Hq, Lq, D], k/v [B, Hk, Lk, D] (GQA by head groups)."""
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                              enable_gqa=q.shape[1] != k.shape[1])

    def attention_prefill(self, q, k, v, k_cache, v_cache, meta: AttentionMeta, window: Optional[int] = None):
        """q [T, Hq, D], k/v [T, Hk, D] (this step's, already written to the cache) -> [T, Hq*D]."""
        T, Hq, D = q.shape
        nkv = k_cache.shape[-2]
        out = torch.empty(T, Hq, D, dtype=q.dtype, device=q.device)
        kc = k_cache.view(-1, nkv, D)
        vc = v_cache.view(-1, nkv, D)
        for i, (s, e, slots) in enumerate(meta.prefill_seqs):
            qi = q[s:e].transpose(0, 1).unsqueeze(0)
            if slots is None:
                ki, vi = k[s:e], v[s:e]
            else:
                ki, vi = kc.index_select(0, slots), vc.index_select(0, slots)
            ki = ki.transpose(0, 1).unsqueeze(0)
            vi = vi.transpose(0, 1).unsqueeze(0)
            mask = meta.prefill_masks[(i, window)]
            if mask is None:
                o = self._sdpa(qi, ki, vi, None, e - s > 1, meta.scale)
            elif isinstance(mask, str):
                o = self._sdpa(qi, ki, vi, None, False, meta.scale)
            else:
                o = self._sdpa(qi, ki, vi, mask, False, meta.scale)
            out[s:e] = o[0].transpose(0, 1)
        return out.view(T, Hq * D)

    def has_fused_decode_attention(self, dtype: torch.dtype) -> bool:
        """Whether `rope_attention_decode` runs for activations / KV cache of `dtype` (own kernel: float32 with the
        own float32 kernels, bf16 where bf16 weights run the own dot-product kernel)."""
        return ((self._f32 is not None and dtype == torch.float32)
                or (self._bf16_dot is not None and self._bf16_attention and dtype == torch.bfloat16))

    def rope_attention_decode(self, q, k, v, k_cache, v_cache, meta: AttentionMeta, window: Optional[int],
                              cos_sin: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """A decode step's rope + KV write + attention in one C++ call (float32 or bf16; `has_fused_decode_attention`):
        q [B, Hq, D], k/v [B, Hk, D] un-rotated (views of the qkv output are fine), cos_sin the model's [max_pos, D]
        cache -> [B, Hq*D]. Same result as rope_heads, write_kv and attention_decode (tests/unit/backend_atb)."""
        pos, slots, tables, lens = self.own_decode_args(meta, positions)
        from .. import cpu_kernels
        mod = cpu_kernels.load()
        fn = mod.rope_attention_decode_bf16 if k_cache.dtype == torch.bfloat16 else mod.rope_attention_decode_f32
        return fn(q, k, v, k_cache, v_cache, cos_sin, pos, slots, tables, lens, window or 0, meta.scale)

    @staticmethod
    def own_decode_args(meta: AttentionMeta, positions: torch.Tensor):
        """(positions, slots, block tables, context lengths) as the own decode kernel reads them, once per step."""
        ex = meta.extra
        if "own_decode" not in ex:
            ex["own_decode"] = (positions.to(torch.int64).contiguous(),
                                meta.slot_mapping.to(torch.int64).contiguous(),
                                meta.block_tables.to(torch.int32).contiguous(),
                                torch.tensor(meta.context_lens, dtype=torch.int64))
        return ex["own_decode"]

    def decode_stack_kernels(self):
        """(C++ module, own float32 kernels used, bf16 GEMV used, bf16 dot-product ISA or -1, its max rows) for a
        whole-step C++ decode (csrc/decode_step.cpp), which must call what this table calls; None without the C++
        module."""
        from .. import cpu_kernels
        mod = self._f32 if self._f32 is not None else cpu_kernels.load()
        if mod is None or not hasattr(mod, "DecodeStack"):
            return None
        dot_isa, dot_rows = (self._bf16_dot[1], self._bf16_dot[2]) if self._bf16_dot is not None else (-1, 0)
        return mod, self._f32 is not None, self._gemv is not None, dot_isa, dot_rows

    def attention_decode(self, q, k_cache, v_cache, meta: AttentionMeta, window: Optional[int] = None):
        """q [B, Hq, D] -> [B, Hq*D]; keys/values gathered from the paged cache by the step's slot table."""
        B, Hq, D = q.shape
        nkv = k_cache.shape[-2]
        slots = meta.decode_slots
        L = slots.shape[1]
        k = k_cache.view(-1, nkv, D).index_select(0, slots.view(-1)).view(B, L, nkv, D).transpose(1, 2)
        v = v_cache.view(-1, nkv, D).index_select(0, slots.view(-1)).view(B, L, nkv, D).transpose(1, 2)
        # one query token per sequence: the query heads sharing a KV head become that head's "query rows"
        # ([B, Hk, Hq/Hk, D]; head i reads KV head i // (Hq/Hk), as enable_gqa does), a plain SDPA call that is
        # 2.5x faster on CPU than the GQA path (measured 31 vs 77 us per layer for Qwen2.5-0.5B at 200 keys)
        o = F.scaled_dot_product_attention(q.view(B, nkv, Hq // nkv, D), k, v,
                                           attn_mask=meta.decode_window_masks[window], scale=meta.scale)
        return o.reshape(B, Hq * D)

    # ---- MLA (layers/mla.py): a paged cache of latents + rope keys ---------------------------------------
    @staticmethod
    def mla_write_cache(latent, k_pe, latent_cache, rope_cache, slot_mapping) -> None:
        """latent [T, r], k_pe [T, 1, dr] into the layer's [blocks, block_size, 1, r] / [.., 1, dr] caches."""
        from ..layers.mla import torch_mla_write_cache
        torch_mla_write_cache(latent, k_pe, latent_cache, rope_cache, slot_mapping)

    def mla_attention_prefill(self, q_nope, q_pe, latent, k_pe, latent_cache, rope_cache, kv_b, meta, m):
        """q_nope [T, H, dn], q_pe [T, H, dr] over the expanded context -> [T, H, dv]."""
        from ..layers.mla import torch_mla_attention_prefill
        return torch_mla_attention_prefill(self, q_nope, q_pe, latent, k_pe, latent_cache, rope_cache, kv_b,
                                           meta, m)

    @staticmethod
    def mla_attention_decode(q_lat, q_pe, latent_cache, rope_cache, meta, scale):
        """Absorbed decode: q_lat [B, H, r], q_pe [B, H, dr] -> latent-space output [B, H, r]."""
        from ..layers.mla import torch_mla_attention_decode
        return torch_mla_attention_decode(q_lat, q_pe, latent_cache, rope_cache, meta, scale)
