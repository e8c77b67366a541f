"""Own model code: one Llama-style decoder with switches, covering llama, mistral, qwen2 (Qwen1.5/2/2.5) and qwen3.

Switches read from the Hugging Face config: qkv bias (qwen2, `attention_bias`), q/k RMSNorm (qwen3), tied
embeddings, rope_theta and rope scaling (linear, llama3, yarn through transformers' own init functions so the
frequencies match), sliding window per layer (mistral `sliding_window`, qwen `layer_types`), `mlp_bias`.

Weights live as plain tensors (no nn.Module call overhead per layer): fused `qkv` [(Hq+2Hk)*D, hidden] and
`gate_up` [2I, hidden], filled from HF safetensors names at load.

Tensor parallelism: `ParallelSpec` says this rank's place; `weight_slice(name)` says which rows or columns of
each checkpoint tensor the rank holds (column-parallel q/k/v by heads and gate/up by rows, row-parallel o/down by
input columns, the embedding and lm_head by vocabulary), so the loader reads only those bytes. `forward` has the
collective points: an all-reduce after o_proj, after down_proj and after the vocabulary-parallel embedding lookup,
and a gather of the vocabulary-parallel logits to rank 0. With one rank none of them runs.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Iterable, Optional

import torch

log = logging.getLogger(__name__)

OWN_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ROPE = ("default", "linear", "llama3", "yarn")


@dataclass
class ParallelSpec:
    """This process's place in a tensor-parallel group (global rank 0 samples and receives the logits)."""
    rank: int = 0
    size: int = 1
    group: object = None        # torch.distributed process group of the model's collectives (None: the world)


def check_tensor_parallel(cfg, world_size: int) -> Optional[str]:
    """Why `cfg` cannot be split over `world_size` ranks (None: it can). Query heads and the MLP width must divide;
    kv heads must divide or be divided by the world size (then each is replicated on world/kv ranks)."""
    if world_size == 1:
        return None
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    if heads % world_size or (kv % world_size and world_size % kv):
        return (f"worldSize {world_size} does not divide the model's heads (num_attention_heads {heads}, "
                f"num_key_value_heads {kv}): use a worldSize that divides num_attention_heads and divides or is a "
                f"multiple of num_key_value_heads")
    if cfg.intermediate_size % world_size:
        return (f"worldSize {world_size} does not divide the model's intermediate_size {cfg.intermediate_size}")
    return None


def rope_type_of(cfg) -> str:
    rp = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    return rp.get("rope_type", rp.get("type", "default")) or "default"


def own_path_supports(cfg) -> tuple[bool, str]:
    mt = getattr(cfg, "model_type", "")
    if mt not in OWN_MODEL_TYPES:
        return False, f"model_type {mt!r} has no own implementation"
    if rope_type_of(cfg) not in SUPPORTED_ROPE:
        return False, f"rope type {rope_type_of(cfg)!r} not in the own implementation"
    if getattr(cfg, "hidden_act", "silu") not in ("silu", "swish"):
        return False, f"activation {cfg.hidden_act!r} not in the own implementation"
    if float(getattr(cfg, "partial_rotary_factor", 1.0) or 1.0) != 1.0:
        return False, "partial rotary embeddings not in the own implementation"
    return True, ""


def build_cos_sin_cache(cfg, head_dim: int, max_pos: int) -> torch.Tensor:
    """[max_pos, head_dim] float32: cat(cos, sin) of the head_dim/2 rotary frequencies, attention scaling applied."""
    rtype = rope_type_of(cfg)
    rp = getattr(cfg, "rope_parameters", None) or {}
    if rtype == "default":
        base = rp.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        scaling = 1.0
    else:
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rtype](cfg, torch.device("cpu"))
        inv_freq = inv_freq.float()
    t = torch.arange(max_pos, dtype=torch.float32)
    freqs = t[:, None] * inv_freq[None, :]
    return torch.cat((freqs.cos() * scaling, freqs.sin() * scaling), dim=-1).contiguous()


def _split_layer_name(name: str) -> tuple[int, str]:
    """("model.layers.3.mlp.down_proj.weight") -> (3, "mlp.down_proj.weight"); (-1, name) outside the layers."""
    m = LlamaFamilyModel._LAYER_RE.match(name)
    return (int(m.group(1)), m.group(2)) if m else (-1, name)


class Layer:
    __slots__ = ("ln1", "qkv", "qkv_bias", "q_norm", "k_norm", "o", "o_bias", "ln2", "gate_up", "gate_up_bias",
                 "down", "down_bias", "window")


class LlamaFamilyModel:
    def __init__(self, cfg, dtype: torch.dtype, device: torch.device, ops, parallel: Optional[ParallelSpec] = None,
                 act_dtype: Optional[torch.dtype] = None):
        """dtype: the weights' dtype. act_dtype: activations, norms, biases and the KV cache (default: dtype);
        float32 with bf16 weights on CPUs without native bf16 ("W16A32": weights streamed as bf16, all math in
        float32, which is both faster and more accurate there)."""
        self.cfg = cfg
        self.dtype, self.device, self.ops = dtype, device, ops
        self.act_dtype = act_dtype or dtype
        self.par = parallel or ParallelSpec()
        tp = self.par.size
        self.model_type = cfg.model_type
        self.hidden = cfg.hidden_size
        self.num_layers = cfg.num_hidden_layers
        self.num_heads_total = cfg.num_attention_heads
        self.num_kv_heads_total = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        why = check_tensor_parallel(cfg, tp)
        if why:
            raise ValueError(why)
        self.num_heads = self.num_heads_total // tp
        # kv heads are replicated when there are fewer than ranks
        self.num_kv_heads = max(1, self.num_kv_heads_total // tp)
        self.inter_total = cfg.intermediate_size
        self.inter = self.inter_total // tp
        self.vocab_size = cfg.vocab_size
        self.eps = float(getattr(cfg, "rms_norm_eps", 1e-6))
        self.qkv_bias = cfg.model_type == "qwen2" or bool(getattr(cfg, "attention_bias", False))
        self.o_bias = bool(getattr(cfg, "attention_bias", False)) and cfg.model_type != "qwen2"
        self.mlp_bias = bool(getattr(cfg, "mlp_bias", False))
        self.qk_norm = cfg.model_type == "qwen3"
        self.tied = bool(getattr(cfg, "tie_word_embeddings", False))
        self.scale = self.head_dim ** -0.5
        self.max_pos = int(getattr(cfg, "max_position_embeddings", 4096) or 4096)
        self.windows = self._layer_windows(cfg)
        self.cos_sin = build_cos_sin_cache(cfg, self.head_dim, self.max_pos).to(device)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.kv_dtype = self.act_dtype
        # checkpoint names another loader fills (the pre-quantized linears: quant/checkpoint.py)
        self.external_weights: set[str] = set()
        self.allow_fused_decode = True      # tests compare against the op-by-op path by clearing it
        self._alloc()

    # ---- configuration -------------------------------------------------------------------------------------
    @property
    def fused_decode_attention(self) -> bool:
        """Decode steps go through the op table's one-call rope + KV write + attention where it has one for this
        dtype (TorchOps with the own float32 CPU kernels); asked per step, the op table can be swapped."""
        has = getattr(self.ops, "has_fused_decode_attention", None)
        return self.allow_fused_decode and has is not None and has(self.kv_dtype)

    @staticmethod
    def _layer_windows(cfg) -> list[Optional[int]]:
        n = cfg.num_hidden_layers
        sw = getattr(cfg, "sliding_window", None)
        if cfg.model_type in ("qwen2", "qwen3"):
            if not getattr(cfg, "use_sliding_window", False) or not sw:
                return [None] * n
            types = getattr(cfg, "layer_types", None) or ["sliding_attention" if i >= cfg.max_window_layers
                                                          else "full_attention" for i in range(n)]
            return [int(sw) if t == "sliding_attention" else None for t in types]
        if cfg.model_type == "mistral" and sw:
            return [int(sw)] * n
        return [None] * n

    def _empty(self, *shape):
        return torch.empty(*shape, dtype=self.dtype, device=self.device)

    def _small(self, *shape):
        """Norm weights and biases: kept in the activation dtype."""
        return torch.empty(*shape, dtype=self.act_dtype, device=self.device)

    def _alloc(self):
        H, D = self.hidden, self.head_dim
        vocab_local = self._vocab_per_rank()
        # padding rows (the last rank's share of a vocabulary that does not divide) stay zero: their logits are
        # cut off after the gather
        self.embed = self._empty(vocab_local, H).zero_()
        self.norm = self._small(H)
        self.lm_head = self.embed if self.tied else self._empty(vocab_local, H).zero_()
        self.layers: list[Layer] = []
        for i in range(self.num_layers):
            L = Layer()
            L.ln1, L.ln2 = self._small(H), self._small(H)
            L.qkv = self._empty(self.q_size + 2 * self.kv_size, H)
            L.qkv_bias = self._small(self.q_size + 2 * self.kv_size) if self.qkv_bias else None
            L.q_norm = self._small(D) if self.qk_norm else None
            L.k_norm = self._small(D) if self.qk_norm else None
            L.o = self._empty(H, self.q_size)
            L.o_bias = self._small(H) if self.o_bias else None
            L.gate_up = self._empty(2 * self.inter, H)
            L.gate_up_bias = self._small(2 * self.inter) if self.mlp_bias else None
            L.down = self._empty(H, self.inter)
            L.down_bias = self._small(H) if self.mlp_bias else None
            L.window = self.windows[i]
            self.layers.append(L)

    # ---- tensor-parallel sharding points -------------------------------------------------------------------
    def _vocab_range(self) -> tuple[int, int]:
        """This rank's rows [lo, hi) of the embedding / lm_head. Every rank holds `_vocab_per_rank` rows (the last
        one zero-padded) so the logits gather has equal parts."""
        per = self._vocab_per_rank()
        lo = min(self.vocab_size, self.par.rank * per)
        return lo, min(self.vocab_size, lo + per)

    def _vocab_per_rank(self) -> int:
        return math.ceil(self.vocab_size / self.par.size)

    def weight_slice(self, name: str) -> Optional[tuple[int, int, int]]:
        """(dim, start, length) of this rank's part of checkpoint tensor `name`, None for the whole tensor.

        Column-parallel (output rows): q by heads, k/v by heads or, with fewer kv heads than ranks, the one kv
        head this rank's query heads read (replicated); gate/up by rows; their biases alike. Row-parallel (input
        columns): o_proj, down_proj (their biases are added once, after the all-reduce). Vocabulary-parallel:
        embed_tokens and lm_head by rows. The loader reads only these bytes (safetensors `get_slice`)."""
        if self.par.size == 1:
            return None
        r = self.par.rank
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            lo, hi = self._vocab_range()
            return 0, lo, hi - lo
        m = self._LAYER_RE.match(name)
        if not m:
            return None
        kind, leaf = m.group(2).rsplit(".", 1)
        if kind == "self_attn.q_proj":
            return 0, r * self.q_size, self.q_size
        if kind in ("self_attn.k_proj", "self_attn.v_proj"):
            if self.num_kv_heads_total < self.par.size:
                head = r * self.num_kv_heads_total // self.par.size
                return 0, head * self.head_dim, self.head_dim
            return 0, r * self.kv_size, self.kv_size
        if kind in ("mlp.gate_proj", "mlp.up_proj"):
            return 0, r * self.inter, self.inter
        if leaf == "weight" and kind == "self_attn.o_proj":
            return 1, r * self.q_size, self.q_size
        if leaf == "weight" and kind == "mlp.down_proj":
            return 1, r * self.inter, self.inter
        return None

    def _all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        torch.distributed.all_reduce(x, group=self.par.group)
        return x

    def _gather_vocab(self, logits: torch.Tensor) -> Optional[torch.Tensor]:
        """Rank 0 gets the full [S, vocab] logits (it alone samples); the other ranks get None."""
        if self.par.size == 1:
            return logits
        logits = logits.contiguous()
        parts = [torch.empty_like(logits) for _ in range(self.par.size)] if self.par.rank == 0 else None
        torch.distributed.gather(logits, parts, dst=0, group=self.par.group)
        if parts is None:
            return None
        return torch.cat(parts, dim=-1)[:, : self.vocab_size]

    # ---- weights -------------------------------------------------------------------------------------------
    _LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")

    def wants_weight(self, name: str) -> bool:
        """False for checkpoint tensors this model never reads (the loader skips them unread)."""
        return not ((name.startswith("lm_head.") and self.tied) or "rotary_emb" in name)

    def load_weights(self, tensors: Iterable[tuple[str, torch.Tensor]], presliced: bool = False) -> None:
        """Fills the fused parameters from HF names; raises on missing weights. `tensors` are whole checkpoint
        tensors (this rank's part is cut here) or, with `presliced`, already this rank's `weight_slice`."""
        seen: set[str] = set()
        q, kv = self.q_size, self.kv_size
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
            m = self._LAYER_RE.match(name)
            if not m:
                log.debug("ignoring weight %s", name)
                continue
            i, rest = int(m.group(1)), m.group(2)
            if i >= self.num_layers:
                continue
            L = self.layers[i]
            kind, dst = rest.rsplit(".", 1)[0], rest.rsplit(".", 1)[1]
            is_bias = dst == "bias"
            if rest == "input_layernorm.weight":
                self._copy(L.ln1, t, name, seen)
            elif rest == "post_attention_layernorm.weight":
                self._copy(L.ln2, t, name, seen)
            elif rest == "self_attn.q_norm.weight":
                self._copy(L.q_norm, t, name, seen)
            elif rest == "self_attn.k_norm.weight":
                self._copy(L.k_norm, t, name, seen)
            elif kind in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                target = L.qkv_bias if is_bias else L.qkv
                if target is None:
                    raise ValueError(f"unexpected weight {name} (config says no qkv bias)")
                off, size = {"self_attn.q_proj": (0, q), "self_attn.k_proj": (q, kv),
                             "self_attn.v_proj": (q + kv, kv)}[kind]
                self._copy(target.narrow(0, off, size), t, name, seen)
            elif kind == "self_attn.o_proj":
                if is_bias:
                    self._copy(L.o_bias, t, name, seen)
                else:
                    self._copy(L.o, t, name, seen)
            elif kind in ("mlp.gate_proj", "mlp.up_proj"):
                target = L.gate_up_bias if is_bias else L.gate_up
                off = 0 if kind == "mlp.gate_proj" else self.inter
                self._copy(target.narrow(0, off, self.inter), t, name, seen)
            elif kind == "mlp.down_proj":
                if is_bias:
                    self._copy(L.down_bias, t, name, seen)
                else:
                    self._copy(L.down, t, name, seen)
            else:
                log.debug("ignoring weight %s", name)
        missing = [n for n in self.expected_weight_names() if n not in seen and n not in self.external_weights]
        if missing:
            raise ValueError(f"weights missing from the checkpoint: {missing[:8]}{' ...' if len(missing) > 8 else ''}")

    def expected_weight_names(self) -> list[str]:
        names = ["model.embed_tokens.weight", "model.norm.weight"]
        if not self.tied:
            names.append("lm_head.weight")
        for i in range(self.num_layers):
            p = f"model.layers.{i}."
            names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight",
                      p + "self_attn.o_proj.weight", p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight",
                      p + "mlp.down_proj.weight"]
            names += [p + f"self_attn.{x}_proj.weight" for x in "qkv"]
            if self.qkv_bias:
                names += [p + f"self_attn.{x}_proj.bias" for x in "qkv"]
            if self.qk_norm:
                names += [p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"]
        return names

    @staticmethod
    def _copy(dst: torch.Tensor, src: torch.Tensor, name: str, seen: set) -> None:
        if tuple(dst.shape) != tuple(src.shape):
            raise ValueError(f"weight {name}: checkpoint shape {tuple(src.shape)} != expected {tuple(dst.shape)}")
        dst.copy_(src)
        seen.add(name)

    def weight_bytes(self) -> int:
        """Bytes of weights read per decode step (lm_head counted once even when tied)."""
        seen, total = set(), 0
        tensors = [self.norm, self.lm_head]
        for L in self.layers:
            tensors += [x for x in (L.ln1, L.ln2, L.qkv, L.qkv_bias, L.q_norm, L.k_norm, L.o, L.o_bias, L.gate_up,
                                    L.gate_up_bias, L.down, L.down_bias) if x is not None]
        for t in tensors:
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
        return total

    # ---- KV cache ------------------------------------------------------------------------------------------
    def kv_bytes_per_block(self, block_size: int) -> int:
        el = torch.tensor([], dtype=self.kv_dtype).element_size()
        return 2 * self.num_layers * block_size * self.num_kv_heads * self.head_dim * el

    def allocate_kv(self, num_blocks: int, block_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        shape = (num_blocks, block_size, self.num_kv_heads, self.head_dim)
        return [(torch.zeros(shape, dtype=self.kv_dtype, device=self.device),
                 torch.zeros(shape, dtype=self.kv_dtype, device=self.device)) for _ in range(self.num_layers)]

    # ---- forward -------------------------------------------------------------------------------------------
    def ensure_positions(self, max_pos: int) -> None:
        if max_pos >= self.cos_sin.shape[0]:
            n = max(max_pos + 1, 2 * self.cos_sin.shape[0])
            self.cos_sin = build_cos_sin_cache(self.cfg, self.head_dim, n).to(self.device)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta, kv_caches,
                logits_indices: torch.Tensor) -> torch.Tensor:
        """input_ids/positions [T] on device -> float32 logits [S, vocab] for the rows in `logits_indices` (None on
        tensor-parallel ranks other than 0)."""
        ops = self.ops
        T = input_ids.shape[0]
        Hq, Hk, D = self.num_heads, self.num_kv_heads, self.head_dim
        q_size, kv_size, eps = self.q_size, self.kv_size, self.eps
        decode = meta.is_decode
        fused = decode and self.fused_decode_attention
        if not fused:
            cos, sin = ops.rope_tables(self.cos_sin, positions, self.act_dtype)
        h = self._embed(input_ids)
        residual = None
        slot_mapping = meta.slot_mapping
        for L, (kc, vc) in zip(self.layers, kv_caches):
            if residual is None:
                residual = h
                x = ops.rms_norm(h, L.ln1, eps)
            else:
                x, residual = ops.add_rms_norm(h, residual, L.ln1, eps)
            qkv = ops.linear(x, L.qkv, L.qkv_bias)
            v = qkv[:, q_size + kv_size:].view(T, Hk, D)
            if fused:
                q, k = qkv[:, :q_size].view(T, Hq, D), qkv[:, q_size:q_size + kv_size].view(T, Hk, D)
                if L.q_norm is not None:
                    q, k = ops.rms_norm(q, L.q_norm, eps), ops.rms_norm(k, L.k_norm, eps)
                o = ops.rope_attention_decode(q, k, v, kc, vc, meta, L.window, self.cos_sin, positions)
            else:
                if L.q_norm is not None:
                    q = ops.rms_norm(qkv[:, :q_size].view(T, Hq, D), L.q_norm, eps)
                    k = ops.rms_norm(qkv[:, q_size:q_size + kv_size].view(T, Hk, D), L.k_norm, eps)
                    q, k = ops.rope(q, k, cos, sin)
                else:       # q and k are adjacent in the fused qkv output: one rotary pass over both
                    qk = ops.rope_heads(qkv[:, :q_size + kv_size].view(T, Hq + Hk, D), cos, sin)
                    q, k = qk[:, :Hq], qk[:, Hq:]
                ops.write_kv(k, v, kc, vc, slot_mapping)
                if decode:
                    o = ops.attention_decode(q, kc, vc, meta, L.window)
                else:
                    o = ops.attention_prefill(q, k, v, kc, vc, meta, L.window)
            h = ops.linear(o, L.o)
            if self.par.size > 1:
                h = self._all_reduce(h)
            if L.o_bias is not None:
                h = h + L.o_bias
            x, residual = ops.add_rms_norm(h, residual, L.ln2, eps)
            a = ops.silu_and_mul(ops.linear(x, L.gate_up, L.gate_up_bias))
            h = ops.linear(a, L.down)
            if self.par.size > 1:
                h = self._all_reduce(h)
            if L.down_bias is not None:
                h = h + L.down_bias
        if logits_indices.shape[0] != T:
            h = h.index_select(0, logits_indices)
            residual = residual.index_select(0, logits_indices)
        x, _ = ops.add_rms_norm(h, residual, self.norm, eps)
        logits = ops.linear(x, self.lm_head).float()
        return self._gather_vocab(logits)

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.par.size == 1:
            return torch.nn.functional.embedding(input_ids, self.embed).to(self.act_dtype)
        lo, hi = self._vocab_range()
        mask = (input_ids >= lo) & (input_ids < hi)
        local = torch.nn.functional.embedding((input_ids - lo).clamp(0, hi - lo - 1), self.embed)
        local = local.to(self.act_dtype) * mask[:, None].to(self.act_dtype)
        return self._all_reduce(local)
