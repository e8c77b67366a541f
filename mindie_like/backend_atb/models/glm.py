"""GLM-4 family on the paged engine: `glm` (GLM-4-9B-chat-hf), `glm4` (GLM-4-0414: a norm after attention and
one after the MLP, each applied before its residual add) and `glm4_moe` (GLM-4.5 / 4.6 / 4.7: routed experts with
sigmoid scores and shared experts after `first_k_dense_replace` dense layers, optional q/k norms).

Rotary is partial (`partial_rotary_factor`, 0.5 by default): only the first head_dim*factor dims of q and k rotate.
`glm` / `glm4` rotate interleaved pairs (GPT-J layout, their native weights); transformers' `glm4_moe` rotates
the half-split (NeoX) way. q/k/v carry a bias (`attention_bias`), o_proj none. The GLM-4 checkpoints store the
MLP's gate and up projections as one `gate_up_proj` (gate rows first), which is also the fused layout here.
"""
from __future__ import annotations

import logging
from typing import Iterable, Optional

import torch

from ..layers.interleaved_rope import (apply_half_split, apply_interleaved, interleaved_tables, rotary_cos_sin,
                                       rotary_dim_of)
from ..model import LlamaFamilyModel, ParallelSpec, _split_layer_name

log = logging.getLogger(__name__)

MODEL_TYPES = ("glm", "glm4", "glm4_moe")


def check_supported(cfg) -> Optional[str]:
    if getattr(cfg, "hidden_act", "silu") not in ("silu", "swish"):
        return f"activation {cfg.hidden_act!r} not in the own implementation"
    if cfg.model_type == "glm4_moe" and int(getattr(cfg, "first_k_dense_replace", 0) or 0) < cfg.num_hidden_layers:
        from .deepseek_v3 import moe_block
        if moe_block() is None:
            return "routed-expert layers need the fused MoE block, not in this build"
    return None


class GlmModel(LlamaFamilyModel):
    def __init__(self, cfg, dtype: torch.dtype, device: torch.device, ops, parallel: Optional[ParallelSpec] = None,
                 act_dtype: Optional[torch.dtype] = None):
        super().__init__(cfg, dtype, device, ops, parallel, act_dtype)
        self.allow_fused_decode = False         # the fused C++ decode rotates full-width NeoX only
        self.qkv_bias = bool(getattr(cfg, "attention_bias", False))
        self.o_bias = False
        self.qk_norm = bool(getattr(cfg, "use_qk_norm", False))
        self.interleaved = cfg.model_type in ("glm", "glm4")
        self.post_norms = cfg.model_type == "glm4"
        self.fused_gate_up = cfg.model_type in ("glm", "glm4")     # glm4_moe's dense MLPs store gate / up apart
        self.rotary_dim = rotary_dim_of(cfg, self.head_dim)
        self.cos_sin = rotary_cos_sin(cfg, self.rotary_dim, min(self.max_pos, 8192)).to(device)
        for L in self.layers:
            L.o_bias = None
            L.qkv_bias = self._small(self.q_size + 2 * self.kv_size) if self.qkv_bias else None
            L.q_norm = self._small(self.head_dim) if self.qk_norm else None
            L.k_norm = self._small(self.head_dim) if self.qk_norm else None
        self.post_attn_norm = [self._small(self.hidden) for _ in self.layers] if self.post_norms else None
        self.post_mlp_norm = [self._small(self.hidden) for _ in self.layers] if self.post_norms else None

    # ---- weights: the fused gate_up_proj and glm4's extra norms --------------------------------------------
    def weight_slice(self, name: str):
        if name.endswith("mlp.gate_up_proj.weight"):
            return None         # gate and up halves are cut separately in load_weights (two row ranges)
        return super().weight_slice(name)

    def load_weights(self, tensors: Iterable[tuple[str, torch.Tensor]], presliced: bool = False) -> None:
        own: set[str] = set()

        def rest():
            for name, t in tensors:
                i, leaf = _split_layer_name(name)
                if leaf == "mlp.gate_up_proj.weight" and self.fused_gate_up and i < self.num_layers:
                    inter = self.inter_total
                    r = self.par.rank
                    gate = t.narrow(0, r * self.inter, self.inter)
                    up = t.narrow(0, inter + r * self.inter, self.inter)
                    self.layers[i].gate_up.copy_(torch.cat((gate, up), dim=0))
                    own.add(name)
                elif self.post_norms and leaf in ("post_self_attn_layernorm.weight", "post_mlp_layernorm.weight") \
                        and i < self.num_layers:
                    dst = self.post_attn_norm if leaf.startswith("post_self") else self.post_mlp_norm
                    self._copy(dst[i], t, name, own)
                else:
                    yield name, t
        self.external_weights |= set(self._own_weight_names())
        try:
            super().load_weights(rest(), presliced)
        finally:
            self.external_weights -= set(self._own_weight_names())
        missing = [n for n in self._own_weight_names() if n not in own]
        if missing:
            raise ValueError(f"weights missing from the checkpoint: {missing[:8]}")

    def _own_weight_names(self) -> list[str]:
        names = []
        for i in range(self.num_layers):
            p = f"model.layers.{i}."
            if self.fused_gate_up:
                names.append(p + "mlp.gate_up_proj.weight")
            if self.post_norms:
                names += [p + "post_self_attn_layernorm.weight", p + "post_mlp_layernorm.weight"]
        return names

    def expected_weight_names(self) -> list[str]:
        fused = ("mlp.gate_proj.weight", "mlp.up_proj.weight") if self.fused_gate_up else ()
        names = [n for n in super().expected_weight_names() if not n.endswith(fused)]
        return names + self._own_weight_names()

    def weight_bytes(self) -> int:
        extra = sum(t.numel() * t.element_size() for t in (self.post_attn_norm or []) + (self.post_mlp_norm or []))
        return super().weight_bytes() + extra

    # ---- forward -------------------------------------------------------------------------------------------
    def ensure_positions(self, max_pos: int) -> None:
        if max_pos >= self.cos_sin.shape[0]:
            n = max(max_pos + 1, 2 * self.cos_sin.shape[0])
            self.cos_sin = rotary_cos_sin(self.cfg, self.rotary_dim, n).to(self.device)

    def forward(self, input_ids, positions, meta, kv_caches, logits_indices):
        ops, eps = self.ops, self.eps
        T = input_ids.shape[0]
        Hq, Hk, D = self.num_heads, self.num_kv_heads, self.head_dim
        q_size, kv_size = self.q_size, self.kv_size
        cos, sin = interleaved_tables(self.cos_sin, positions, self.act_dtype)
        rot = apply_interleaved if self.interleaved else apply_half_split
        h = self._embed(input_ids)
        residual = None
        for i, (L, (kc, vc)) in enumerate(zip(self.layers, kv_caches)):
            if residual is None:
                residual = h
                x = ops.rms_norm(h, L.ln1, eps)
            else:
                x, residual = ops.add_rms_norm(h, residual, L.ln1, eps)
            qkv = ops.linear(x, L.qkv, L.qkv_bias)
            q = qkv[:, :q_size].view(T, Hq, D)
            k = qkv[:, q_size:q_size + kv_size].view(T, Hk, D)
            v = qkv[:, q_size + kv_size:].view(T, Hk, D)
            if L.q_norm is not None:
                q, k = ops.rms_norm(q.contiguous(), L.q_norm, eps), ops.rms_norm(k.contiguous(), L.k_norm, eps)
            q, k = rot(q, cos, sin), rot(k, cos, sin)
            ops.write_kv(k, v, kc, vc, meta.slot_mapping)
            if meta.is_decode:
                o = ops.attention_decode(q.contiguous(), kc, vc, meta, None)
            else:
                o = ops.attention_prefill(q, k, v, kc, vc, meta, None)
            h = ops.linear(o, L.o)
            if self.par.size > 1:
                h = self._all_reduce(h)
            if self.post_norms:
                h = ops.rms_norm(h, self.post_attn_norm[i], eps)
            x, residual = ops.add_rms_norm(h, residual, L.ln2, eps)
            h = self._mlp(i, L, x)
            if self.post_norms:
                h = ops.rms_norm(h, self.post_mlp_norm[i], eps)
        if logits_indices.shape[0] != T:
            h = h.index_select(0, logits_indices)
            residual = residual.index_select(0, logits_indices)
        x, _ = ops.add_rms_norm(h, residual, self.norm, eps)
        logits = ops.linear(x, self.lm_head).float()
        return self._gather_vocab(logits)

    def _mlp(self, i: int, L, x):
        h = self.ops.linear(self.ops.silu_and_mul(self.ops.linear(x, L.gate_up)), L.down)
        if self.par.size > 1:
            h = self._all_reduce(h)
        return h
MODEL_CLASS = GlmModel


def check_parallel(cfg, world: int) -> Optional[str]:
    from ..model import check_tensor_parallel
    why = check_tensor_parallel(cfg, world)
    if why or cfg.model_type != "glm4_moe":
        return why
    from .deepseek_v3 import moe_block
    moe = moe_block()
    if moe is not None and hasattr(moe, "check_parallel"):
        return moe.check_parallel(cfg, world)
    return None
