"""Multi-head Latent Attention (DeepSeek V2/V3/R1, Kimi K2) over a paged cache of the compressed latent.

Per token and layer the cache holds `kv_lora_rank` values of the normalised latent c and `qk_rope_head_dim`
values of the rotated, head-shared rope key: two paged tensors per layer, latent [blocks, block_size, 1, r] and
rope key [blocks, block_size, 1, dr] (the (key, value) pair layout of `_npu_reshape_and_cache`), never expanded
per-head keys and values.

* prefill (and prefill chunks over a cached prefix): the context's latents are expanded with kv_b_proj into
  per-head k_nope / v and attended as ordinary attention (q.k over nope + rope dims, v of v_head_dim);
* decode: the absorbed form. q_nope is folded through W_UK (kv_b_proj's key half) into the latent space, so a
  head's score is [q_lat, q_pe] . [c, k_pe] against the cache rows as they are (one shared "KV head"), and the
  weighted sum of latents goes back through W_UV (the value half) before o_proj. W_UK and W_UV are views of
  kv_b_proj's weight: absorbing costs no memory.

Tensor parallelism splits the heads: q_proj / q_b_proj and kv_b_proj by heads (rows), o_proj by its input
columns; q_a_proj, kv_a_proj_with_mqa and their norms are replicated, so every rank caches the same latent.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .component import Module, Placement
from .interleaved_rope import mla_softmax_scale
from .linear import ColumnParallelLinear, ReplicatedLinear, RowParallelLinear
from .norm import RMSNorm


class MLAConfig:
    """The MLA shapes of one model and this rank's share of its heads."""

    def __init__(self, cfg, tp_size: int = 1):
        self.hidden = cfg.hidden_size
        self.heads_total = cfg.num_attention_heads
        if self.heads_total % tp_size:
            raise ValueError(f"worldSize {tp_size} does not divide num_attention_heads {self.heads_total}")
        self.heads = self.heads_total // tp_size
        self.q_lora_rank = getattr(cfg, "q_lora_rank", None) or None
        self.kv_lora_rank = int(cfg.kv_lora_rank)
        self.nope = int(cfg.qk_nope_head_dim)
        self.rope = int(cfg.qk_rope_head_dim)
        self.v_dim = int(cfg.v_head_dim)
        self.qk_dim = self.nope + self.rope
        self.bias = bool(getattr(cfg, "attention_bias", False))
        self.eps = float(getattr(cfg, "rms_norm_eps", 1e-6))
        self.scale = mla_softmax_scale(cfg, self.qk_dim)

    def cache_values_per_token(self) -> int:
        """Values one token takes in one layer's cache: the latent plus the shared rope key."""
        return self.kv_lora_rank + self.rope

    def full_kv_values_per_token(self) -> int:
        """What expanded per-head K and V would take instead (all heads, not this rank's share)."""
        return self.heads_total * (self.qk_dim + self.v_dim)


class MLAPagedCache:
    """The attention-kernel side of one MLA layer: its cache shapes, softmax scale and (no) window, what the
    model's KV sizing and the step metadata read (`attention_layers()`)."""
    window = None

    def __init__(self, m: MLAConfig):
        self.m = m
        self.scale = m.scale

    def kv_cache_shapes(self, num_blocks: int, block_size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return (num_blocks, block_size, 1, self.m.kv_lora_rank), (num_blocks, block_size, 1, self.m.rope)


class MLAAttention(Module):
    """q (direct or through q_lora), the latent and rope key from kv_a_proj_with_mqa, rotary on the rope parts,
    the cache write, attention (expanded on prefill, absorbed on decode), o_proj (row-parallel, all-reduced)."""

    def __init__(self, m: MLAConfig, prefix: str, pl: Placement, rotary):
        H = m.heads_total
        if m.q_lora_rank is None:
            self.q_proj = ColumnParallelLinear(prefix + ".q_proj", m.hidden, H * m.qk_dim, False, pl)
            self.q_a_proj = self.q_a_layernorm = self.q_b_proj = None
        else:
            self.q_proj = None
            self.q_a_proj = ReplicatedLinear(prefix + ".q_a_proj", m.hidden, m.q_lora_rank, m.bias, pl)
            self.q_a_layernorm = RMSNorm(prefix + ".q_a_layernorm", m.q_lora_rank, m.eps, pl)
            self.q_b_proj = ColumnParallelLinear(prefix + ".q_b_proj", m.q_lora_rank, H * m.qk_dim, False, pl)
        self.kv_a_proj_with_mqa = ReplicatedLinear(prefix + ".kv_a_proj_with_mqa", m.hidden, m.kv_lora_rank + m.rope,
                                                   m.bias, pl)
        self.kv_a_layernorm = RMSNorm(prefix + ".kv_a_layernorm", m.kv_lora_rank, m.eps, pl)
        # by heads (rows); kept dense, never weight-only quantized: its halves are decode's absorbed W_UK / W_UV
        self.kv_b_proj = ColumnParallelLinear(prefix + ".kv_b_proj", m.kv_lora_rank, H * (m.nope + m.v_dim), False,
                                              pl)
        self.kv_b_proj.quantizable = False
        self.o_proj = RowParallelLinear(prefix + ".o_proj", H * m.v_dim, m.hidden, m.bias, pl)
        self.m = m
        self.rotary = rotary
        self.attn = MLAPagedCache(m)

    def forward(self, ctx, x: torch.Tensor, kv_cache) -> torch.Tensor:
        m, ops = self.m, ctx.ops
        T = x.shape[0]
        H, r, dn = m.heads, m.kv_lora_rank, m.nope
        if self.q_proj is not None:
            q = self.q_proj.forward(ops, x)
        else:
            q = self.q_b_proj.forward(ops, self.q_a_layernorm.forward(ops, self.q_a_proj.forward(ops, x)))
        q = q.view(T, H, m.qk_dim)
        ckv = self.kv_a_proj_with_mqa.forward(ops, x)
        latent = self.kv_a_layernorm.forward(ops, ckv[:, :r].contiguous())
        tables = ctx.rope_tables(self.rotary)
        q_pe = self.rotary.apply_heads(ops, q[..., dn:], tables)
        k_pe = self.rotary.apply_heads(ops, ckv[:, None, r:], tables)
        latent_cache, rope_cache = kv_cache
        latent, k_pe = latent.to(latent_cache.dtype), k_pe.to(rope_cache.dtype)
        ops.mla_write_cache(latent, k_pe, latent_cache, rope_cache, ctx.meta.slot_mapping)
        kv_b = self.kv_b_proj.weight
        if ctx.meta.is_decode:
            kvb = kv_b.view(H, dn + m.v_dim, r)
            w_uk, w_uv = kvb[:, :dn, :], kvb[:, dn:, :]
            # q_nope [T, H, dn] -> the latent space [T, H, r] through each head's W_UK
            q_lat = torch.bmm(q[..., :dn].transpose(0, 1), w_uk.to(q.dtype)).transpose(0, 1)
            o_lat = ops.mla_attention_decode(q_lat.contiguous(), q_pe.contiguous(), latent_cache, rope_cache,
                                             ctx.meta, m.scale)
            o = torch.bmm(o_lat.transpose(0, 1), w_uv.transpose(1, 2).to(o_lat.dtype)).transpose(0, 1)
        else:
            o = ops.mla_attention_prefill(q[..., :dn], q_pe, latent, k_pe, latent_cache, rope_cache, kv_b, ctx.meta,
                                          m)
        return self.o_proj.forward(ops, o.reshape(T, H * m.v_dim))


# ---- plain-torch implementations of the op-table entries (TorchOps delegates here) ---------------------------
def torch_mla_write_cache(latent, k_pe, latent_cache, rope_cache, slot_mapping) -> None:
    latent_cache.view(-1, latent_cache.shape[-1]).index_copy_(0, slot_mapping, latent)
    rope_cache.view(-1, rope_cache.shape[-1]).index_copy_(0, slot_mapping, k_pe.reshape(k_pe.shape[0], -1))


def _expand(latent: torch.Tensor, k_pe: torch.Tensor, kv_b: torch.Tensor, m: MLAConfig, linear):
    """Context latents [L, r] and rope keys [L, dr] -> per-head k [L, H, dn+dr], v [L, H, dv]."""
    L = latent.shape[0]
    kv = linear(latent, kv_b).view(L, m.heads, m.nope + m.v_dim)
    k = torch.cat((kv[..., :m.nope], k_pe.reshape(L, 1, m.rope).expand(L, m.heads, m.rope)), dim=-1)
    return k, kv[..., m.nope:]


def torch_mla_attention_prefill(ops, q_nope, q_pe, latent, k_pe, latent_cache, rope_cache, kv_b, meta,
                                m: MLAConfig) -> torch.Tensor:
    """Varlen causal attention of this step's queries over each sequence's context (cached prefix and this
    step's tokens, both already in the cache), the context's latents expanded with kv_b -> [T, H, dv]."""
    T = q_nope.shape[0]
    q = torch.cat((q_nope, q_pe), dim=-1)
    out = torch.empty(T, m.heads, m.v_dim, dtype=q.dtype, device=q.device)
    lc = latent_cache.view(-1, latent_cache.shape[-1])
    rc = rope_cache.view(-1, rope_cache.shape[-1])
    for i, (s, e, slots) in enumerate(meta.prefill_seqs):
        if slots is None:
            lat, kpe = latent[s:e], k_pe[s:e]
        else:
            lat, kpe = lc.index_select(0, slots), rc.index_select(0, slots)
        k, v = _expand(lat.to(q.dtype), kpe.to(q.dtype), kv_b, m, ops.linear)
        mask = meta.prefill_masks[(i, None)]
        qi, ki, vi = q[s:e].transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        if mask is None:
            o = F.scaled_dot_product_attention(qi, ki, vi, is_causal=e - s > 1, scale=m.scale)
        elif isinstance(mask, str):
            o = F.scaled_dot_product_attention(qi, ki, vi, scale=m.scale)
        else:
            o = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, scale=m.scale)
        out[s:e] = o.transpose(0, 1)
    return out


def torch_mla_attention_decode(q_lat, q_pe, latent_cache, rope_cache, meta, scale: float) -> torch.Tensor:
    """Absorbed decode: q_lat [B, H, r], q_pe [B, H, dr] against each sequence's cached rows -> [B, H, r]."""
    B, H, r = q_lat.shape
    slots = meta.decode_slots
    L = slots.shape[1]
    flat = slots.reshape(-1)
    lat = latent_cache.view(-1, r).index_select(0, flat).view(B, 1, L, r)
    kpe = rope_cache.view(-1, rope_cache.shape[-1]).index_select(0, flat).view(B, 1, L, -1)
    k = torch.cat((lat, kpe), dim=-1).to(q_lat.dtype)
    q = torch.cat((q_lat, q_pe), dim=-1).view(B, 1, H, -1)      # the heads share one latent "KV head"
    o = F.scaled_dot_product_attention(q, k, k[..., :r], attn_mask=meta.decode_window_masks.get(None),
                                       scale=scale)
    return o.view(B, H, r)
