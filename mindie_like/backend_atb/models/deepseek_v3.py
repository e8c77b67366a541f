"""DeepSeek V3 / R1 / V3.1 (and Kimi K2, Moonlight: the same architecture) on the paged engine.

Attention is MLA (layers/mla.py: a cache of latent + rope key per token, absorbed weights on decode); the first
`first_k_dense_replace` layers have a dense SiLU MLP, the rest a routed MoE with shared experts (sigmoid scores,
`e_score_correction_bias`, group-limited top-k, `routed_scaling_factor`). The multi-token-prediction layers a
checkpoint may carry after the last layer (`num_nextn_predict_layers`) are never read. FP8 block-quantized
checkpoints are dequantized while they stream in (quant/fp8_block.py).
"""
from __future__ import annotations

import logging
import re
from typing import Iterable, Optional

import torch

from ..layers.interleaved_rope import interleaved_tables, rotary_cos_sin
from ..layers.mla import (MLAConfig, MLALayerWeights, allocate_mla_cache, mla_cache_bytes_per_block, mla_forward,
                          mla_weight_slice)
from ..model import LlamaFamilyModel, ParallelSpec

log = logging.getLogger(__name__)

MODEL_TYPES = ("deepseek_v3", "kimi_k2")
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def check_supported(cfg) -> Optional[str]:
    """Why the own path cannot serve `cfg` (None: it can)."""
    if getattr(cfg, "hidden_act", "silu") not in ("silu", "swish"):
        return f"activation {cfg.hidden_act!r} not in the own implementation"
    if int(getattr(cfg, "first_k_dense_replace", 0) or 0) < cfg.num_hidden_layers and moe_block() is None:
        return "routed-expert layers need the fused MoE block, not in this build"
    return None


def moe_block():
    """The shared fused MoE block (layers/moe.py), None where this build has none."""
    try:
        from ..layers import moe  # noqa: F401
    except ImportError:
        return None
    return moe


class DenseMLP:
    __slots__ = ("gate_up", "down")


class DeepseekV3Layer:
    __slots__ = ("ln1", "ln2", "attn", "mlp", "moe")


class DeepseekV3Model(LlamaFamilyModel):
    """Reuses the llama family's vocabulary-parallel embedding / lm_head, collectives and weight copying; the
    decoder layer is its own."""

    def __init__(self, cfg, dtype: torch.dtype, device: torch.device, ops, parallel: Optional[ParallelSpec] = None,
                 act_dtype: Optional[torch.dtype] = None):
        self.cfg = cfg
        self.dtype, self.device, self.ops = dtype, device, ops
        self.act_dtype = act_dtype or dtype
        self.kv_dtype = self.act_dtype
        self.par = parallel or ParallelSpec()
        tp = self.par.size
        self.model_type = cfg.model_type
        self.hidden = cfg.hidden_size
        self.num_layers = cfg.num_hidden_layers
        self.vocab_size = cfg.vocab_size
        self.eps = float(getattr(cfg, "rms_norm_eps", 1e-6))
        self.tied = bool(getattr(cfg, "tie_word_embeddings", False))
        self.mla = MLAConfig(cfg, tp)
        self.scale = self.mla.scale
        if cfg.intermediate_size % tp:
            raise ValueError(f"worldSize {tp} does not divide intermediate_size {cfg.intermediate_size}")
        self.inter = cfg.intermediate_size // tp
        self.first_dense = min(int(getattr(cfg, "first_k_dense_replace", 0) or 0), self.num_layers)
        self.max_pos = int(getattr(cfg, "max_position_embeddings", 4096) or 4096)
        self.windows = [None] * self.num_layers
        self.cos_sin = rotary_cos_sin(cfg, self.mla.rope, min(self.max_pos, 8192)).to(device)
        self.external_weights: set[str] = set()
        self.allow_fused_decode = False
        self._alloc()

    # ---- parameters ----------------------------------------------------------------------------------------
    def _alloc(self):
        H = self.hidden
        vocab_local = self._vocab_per_rank()
        self.embed = self._empty(vocab_local, H).zero_()
        self.norm = self._small(H)
        self.lm_head = self.embed if self.tied else self._empty(vocab_local, H).zero_()
        self.layers = []
        for i in range(self.num_layers):
            L = DeepseekV3Layer()
            L.ln1, L.ln2 = self._small(H), self._small(H)
            L.attn = MLALayerWeights(self.mla, self._empty, self._small)
            L.mlp = L.moe = None
            if i < self.first_dense:
                L.mlp = DenseMLP()
                L.mlp.gate_up = self._empty(2 * self.inter, H)
                L.mlp.down = self._empty(H, self.inter)
            else:
                L.moe = moe_block().build_for(self.cfg, self)     # the shared MoE block's constructor
            self.layers.append(L)

    def wants_weight(self, name: str) -> bool:
        m = _LAYER_RE.match(name)
        if m and int(m.group(1)) >= self.num_layers:        # multi-token-prediction layers
            return False
        return super().wants_weight(name)

    def weight_slice(self, name: str) -> Optional[tuple[int, int, int]]:
        if self.par.size == 1:
            return None
        r = self.par.rank
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            lo, hi = self._vocab_range()
            return 0, lo, hi - lo
        m = _LAYER_RE.match(name)
        if not m:
            return None
        i, rest = int(m.group(1)), m.group(2)
        if rest.startswith("self_attn."):
            return mla_weight_slice(rest[len("self_attn."):], self.mla, r)
        if i < self.first_dense:
            if rest in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
                return 0, r * self.inter, self.inter
            if rest == "mlp.down_proj.weight":
                return 1, r * self.inter, self.inter
            return None
        if i < self.num_layers and self.layers[i].moe is not None:
            return self.layers[i].moe.weight_slice(rest)
        return None

    def load_weights(self, tensors: Iterable[tuple[str, torch.Tensor]], presliced: bool = False) -> None:
        seen: set[str] = set()
        for name, t in tensors:
            if not self.wants_weight(name):
                continue
            if not presliced:
                spec = self.weight_slice(name)
                if spec is not None:
                    t = t.narrow(*spec)
            if name in ("model.embed_tokens.weight", "lm_head.weight"):
                dst = self.embed if name == "model.embed_tokens.weight" else self.lm_head
                self._copy(dst.narrow(0, 0, t.shape[0]) if t.shape[0] < dst.shape[0] else dst, t, name, seen)
                continue
            if name == "model.norm.weight":
                self._copy(self.norm, t, name, seen)
                continue
            m = _LAYER_RE.match(name)
            if not m:
                log.debug("ignoring weight %s", name)
                continue
            L = self.layers[int(m.group(1))]
            rest = m.group(2)
            if rest == "input_layernorm.weight":
                self._copy(L.ln1, t, name, seen)
            elif rest == "post_attention_layernorm.weight":
                self._copy(L.ln2, t, name, seen)
            elif rest.startswith("self_attn."):
                attr = MLALayerWeights.LEAVES.get(rest[len("self_attn."):])
                dst = getattr(L.attn, attr) if attr else None
                if dst is None:
                    raise ValueError(f"unexpected weight {name} for this config")
                self._copy(dst, t, name, seen)
            elif L.mlp is not None and rest in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
                off = 0 if rest == "mlp.gate_proj.weight" else self.inter
                self._copy(L.mlp.gate_up.narrow(0, off, self.inter), t, name, seen)
            elif L.mlp is not None and rest == "mlp.down_proj.weight":
                self._copy(L.mlp.down, t, name, seen)
            elif L.moe is not None and rest.startswith("mlp."):
                L.moe.load(rest, t)
                seen.add(name)
            else:
                log.debug("ignoring weight %s", name)
        missing = [n for n in self.expected_weight_names() if n not in seen and n not in self.external_weights]
        if missing:
            raise ValueError(f"weights missing from the checkpoint: {missing[:8]}{' ...' if len(missing) > 8 else ''}")

    def expected_weight_names(self) -> list[str]:
        names = ["model.embed_tokens.weight", "model.norm.weight"]
        if not self.tied:
            names.append("lm_head.weight")
        for i, L in enumerate(self.layers):
            p = f"model.layers.{i}."
            names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
            names += [p + "self_attn." + leaf for leaf in L.attn.names()]
            if L.mlp is not None:
                names += [p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
            else:
                names += [p + n for n in L.moe.expected_names()]
        return names

    def weight_bytes(self) -> int:
        seen, total = set(), 0
        tensors = [self.norm, self.lm_head]
        for L in self.layers:
            tensors += [L.ln1, L.ln2] + [getattr(L.attn, a) for a in MLALayerWeights.__slots__]
            if L.mlp is not None:
                tensors += [L.mlp.gate_up, L.mlp.down]
        for t in tensors:
            if t is not None and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
        total += sum(L.moe.weight_bytes() for L in self.layers if L.moe is not None)
        return total

    # ---- KV cache: latents, not expanded K/V ---------------------------------------------------------------
    def kv_bytes_per_block(self, block_size: int) -> int:
        return mla_cache_bytes_per_block(self.mla, self.num_layers, block_size, self.kv_dtype)

    def allocate_kv(self, num_blocks: int, block_size: int):
        return allocate_mla_cache(self.mla, self.num_layers, num_blocks, block_size, self.kv_dtype, self.device)

    # ---- forward -------------------------------------------------------------------------------------------
    def ensure_positions(self, max_pos: int) -> None:
        if max_pos >= self.cos_sin.shape[0]:
            n = max(max_pos + 1, 2 * self.cos_sin.shape[0])
            self.cos_sin = rotary_cos_sin(self.cfg, self.mla.rope, n).to(self.device)

    def forward(self, input_ids, positions, meta, kv_caches, logits_indices):
        ops, eps = self.ops, self.eps
        T = input_ids.shape[0]
        cos, sin = interleaved_tables(self.cos_sin, positions, self.act_dtype)
        h = self._embed(input_ids)
        residual = None
        for L, cache in zip(self.layers, kv_caches):
            if residual is None:
                residual = h
                x = ops.rms_norm(h, L.ln1, eps)
            else:
                x, residual = ops.add_rms_norm(h, residual, L.ln1, eps)
            h = mla_forward(self.mla, L.attn, x, cos, sin, meta, cache, ops)
            if self.par.size > 1:
                h = self._all_reduce(h)
            if L.attn.o_bias is not None:
                h = h + L.attn.o_bias
            x, residual = ops.add_rms_norm(h, residual, L.ln2, eps)
            if L.mlp is not None:
                h = ops.linear(ops.silu_and_mul(ops.linear(x, L.mlp.gate_up)), L.mlp.down)
                if self.par.size > 1:
                    h = self._all_reduce(h)
            else:
                h = L.moe.forward(x)
        if logits_indices.shape[0] != T:
            h = h.index_select(0, logits_indices)
            residual = residual.index_select(0, logits_indices)
        x, _ = ops.add_rms_norm(h, residual, self.norm, eps)
        logits = ops.linear(x, self.lm_head).float()
        return self._gather_vocab(logits)
MODEL_CLASS = DeepseekV3Model


def check_parallel(cfg, world: int) -> Optional[str]:
    """Why `cfg` cannot be split over `world` ranks: MLA heads and the dense MLP width must divide."""
    if cfg.num_attention_heads % world:
        return f"worldSize {world} does not divide num_attention_heads {cfg.num_attention_heads} (MLA heads split)"
    if cfg.intermediate_size % world:
        return f"worldSize {world} does not divide intermediate_size {cfg.intermediate_size}"
    moe = moe_block()
    if moe is not None and hasattr(moe, "check_parallel"):
        return moe.check_parallel(cfg, world)
    return None
