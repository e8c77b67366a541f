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

from typing import Optional

import torch
import torch.nn.functional as F

from .interleaved_rope import apply_half_split, apply_interleaved, mla_softmax_scale


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
        self.interleaved = bool(getattr(cfg, "rope_interleave", True))
        self.eps = float(getattr(cfg, "rms_norm_eps", 1e-6))
        self.scale = mla_softmax_scale(cfg, self.qk_dim)

    def cache_values_per_token(self) -> int:
        """Values one token takes in one layer's cache: the latent plus the shared rope key."""
        return self.kv_lora_rank + self.rope

    def full_kv_values_per_token(self) -> int:
        """What expanded per-head K and V would take instead (all heads, not this rank's share)."""
        return self.heads_total * (self.qk_dim + self.v_dim)


class MLALayerWeights:
    """One layer's MLA parameters (this rank's slices), plain tensors filled by the model's loader."""
    __slots__ = ("q_proj", "q_a", "q_a_bias", "q_a_norm", "q_b", "kv_a", "kv_a_bias", "kv_a_norm", "kv_b", "o",
                 "o_bias")

    def __init__(self, m: MLAConfig, empty, small):
        H = m.heads
        if m.q_lora_rank is None:
            self.q_proj = empty(H * m.qk_dim, m.hidden)
            self.q_a = self.q_a_bias = self.q_a_norm = self.q_b = None
        else:
            self.q_proj = None
            self.q_a = empty(m.q_lora_rank, m.hidden)
            self.q_a_bias = small(m.q_lora_rank) if m.bias else None
            self.q_a_norm = small(m.q_lora_rank)
            self.q_b = empty(H * m.qk_dim, m.q_lora_rank)
        self.kv_a = empty(m.kv_lora_rank + m.rope, m.hidden)
        self.kv_a_bias = small(m.kv_lora_rank + m.rope) if m.bias else None
        self.kv_a_norm = small(m.kv_lora_rank)
        # kept dense (never weight-only quantized): its halves are the absorbed W_UK / W_UV of decode
        self.kv_b = empty(H * (m.nope + m.v_dim), m.kv_lora_rank)
        self.o = empty(m.hidden, H * m.v_dim)
        self.o_bias = small(m.hidden) if m.bias else None

    # checkpoint leaf (under `self_attn.`) -> attribute
    LEAVES = {"q_proj.weight": "q_proj", "q_a_proj.weight": "q_a", "q_a_proj.bias": "q_a_bias",
              "q_a_layernorm.weight": "q_a_norm", "q_b_proj.weight": "q_b", "kv_a_proj_with_mqa.weight": "kv_a",
              "kv_a_proj_with_mqa.bias": "kv_a_bias", "kv_a_layernorm.weight": "kv_a_norm",
              "kv_b_proj.weight": "kv_b", "o_proj.weight": "o", "o_proj.bias": "o_bias"}

    def names(self) -> list[str]:
        return [leaf for leaf, attr in self.LEAVES.items() if getattr(self, attr) is not None]


def mla_weight_slice(leaf: str, m: MLAConfig, rank: int) -> Optional[tuple[int, int, int]]:
    """(dim, start, length) of this rank's part of `self_attn.<leaf>` (None: replicated)."""
    if leaf in ("q_proj.weight", "q_b_proj.weight"):
        return 0, rank * m.heads * m.qk_dim, m.heads * m.qk_dim
    if leaf == "kv_b_proj.weight":
        per = m.nope + m.v_dim
        return 0, rank * m.heads * per, m.heads * per
    if leaf == "o_proj.weight":
        return 1, rank * m.heads * m.v_dim, m.heads * m.v_dim
    return None


def allocate_mla_cache(m: MLAConfig, num_layers: int, num_blocks: int, block_size: int, dtype, device):
    return [(torch.zeros(num_blocks, block_size, 1, m.kv_lora_rank, dtype=dtype, device=device),
             torch.zeros(num_blocks, block_size, 1, m.rope, dtype=dtype, device=device)) for _ in range(num_layers)]


def mla_cache_bytes_per_block(m: MLAConfig, num_layers: int, block_size: int, dtype) -> int:
    el = torch.tensor([], dtype=dtype).element_size()
    return num_layers * block_size * m.cache_values_per_token() * el


def mla_forward(m: MLAConfig, W: MLALayerWeights, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                meta, cache: tuple[torch.Tensor, torch.Tensor], ops) -> torch.Tensor:
    """x [T, hidden] (normed) -> o_proj input [T, heads*v_dim]'s projection [T, hidden] (before any all-reduce
    and before o_proj's bias). cos/sin [T, 1, rope/2] from `interleaved_tables`."""
    T = x.shape[0]
    H, r, dn, dr = m.heads, m.kv_lora_rank, m.nope, m.rope
    if W.q_proj is not None:
        q = ops.linear(x, W.q_proj)
    else:
        q = ops.linear(ops.rms_norm(ops.linear(x, W.q_a, W.q_a_bias), W.q_a_norm, m.eps), W.q_b)
    q = q.view(T, H, m.qk_dim)
    ckv = ops.linear(x, W.kv_a, W.kv_a_bias)
    latent = ops.rms_norm(ckv[:, :r].contiguous(), W.kv_a_norm, m.eps)
    rot = apply_interleaved if m.interleaved else apply_half_split
    q_pe = rot(q[..., dn:], cos, sin)
    k_pe = rot(ckv[:, None, r:], cos, sin)
    latent = latent.to(cache[0].dtype)
    k_pe = k_pe.to(cache[1].dtype)
    ops.mla_write_cache(latent, k_pe, cache[0], cache[1], meta.slot_mapping)
    if meta.is_decode:
        kvb = W.kv_b.view(H, dn + m.v_dim, r)
        w_uk, w_uv = kvb[:, :dn, :], kvb[:, dn:, :]
        # q_nope [T, H, dn] -> latent space [T, H, r] through each head's W_UK
        q_lat = torch.bmm(q[..., :dn].transpose(0, 1), w_uk.to(q.dtype)).transpose(0, 1)
        o_lat = ops.mla_attention_decode(q_lat.contiguous(), q_pe.contiguous(), cache[0], cache[1], meta, m.scale)
        o = torch.bmm(o_lat.transpose(0, 1), w_uv.transpose(1, 2).to(o_lat.dtype)).transpose(0, 1)
    else:
        o = ops.mla_attention_prefill(q[..., :dn], q_pe, latent, k_pe, cache[0], cache[1], W.kv_b, meta, m)
    return ops.linear(o.reshape(T, H * m.v_dim), W.o)


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
