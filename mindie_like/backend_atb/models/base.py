"""The base of every own architecture: weight loading by checkpoint name, the paged KV cache, and the
decoder-only forward (embedding -> layers -> final norm -> vocabulary-parallel lm_head).

An architecture subclass builds its components in `build()` (`self.embed_tokens`, `self.layers`, `self.norm`,
`self.head`) from `backend_atb/layers`; each component says which checkpoint prefixes it reads, which part of
each tensor this rank reads (`shard_spec`) and how to copy it in (`load`), so this class needs no per-architecture
name table. A decoder layer implements `forward(ctx, h, residual, kv_cache) -> (h, residual)`.
"""
from __future__ import annotations

import logging
from typing import Iterable, Optional

import torch

from ..layers import ParallelSpec, Placement, walk
from ..layers.component import Component, ShardSpec, apply_shard
from ..layers.rotary import RotaryEmbedding

log = logging.getLogger(__name__)


class StepContext:
    """What every layer of one forward step shares: the op table, the attention metadata, the positions, and the
    rotary tables (computed on first use, once per step per rotary cache)."""

    def __init__(self, ops, meta, positions: torch.Tensor, act_dtype: torch.dtype, fused_decode: bool):
        self.ops, self.meta, self.positions, self.act_dtype = ops, meta, positions, act_dtype
        self.fused_decode = fused_decode
        self._tables: dict[int, tuple] = {}

    def rope_tables(self, rotary: RotaryEmbedding):
        t = self._tables.get(id(rotary))
        if t is None:
            t = self._tables[id(rotary)] = rotary.tables(self.ops, self.positions, self.act_dtype)
        return t


class CausalLM:
    """Subclasses set `build()`; `supports(cfg)` and `parallel_refusal(cfg, world)` say what they cannot run."""

    def __init__(self, cfg, dtype: torch.dtype, device: torch.device, ops, parallel: Optional[ParallelSpec] = None,
                 act_dtype: Optional[torch.dtype] = None, load_quant=None):
        """dtype: the weights' dtype. act_dtype: activations, norms, biases and the KV cache (default: dtype);
        float32 with bf16 weights on CPUs without native bf16 ("W16A32": weights streamed as bf16, all math in
        float32, which is both faster and more accurate there). load_quant: quantize each linear as it loads
        (quant/load_time.py)."""
        self.cfg = cfg
        self.model_type = cfg.model_type
        self.dtype, self.device, self.ops = dtype, device, ops
        self.act_dtype = act_dtype or dtype
        self.kv_dtype = self.act_dtype
        self.par = parallel or ParallelSpec()
        why = self.parallel_refusal(cfg, self.par.size, self.par.moe_ep) if self.par.size > 1 else None
        if why:
            raise ValueError(why)
        self.pl = Placement(dtype, self.act_dtype, device, self.par, load_quant)
        self.vocab_size = cfg.vocab_size
        self.num_layers = cfg.num_hidden_layers
        # checkpoint names another loader fills (the pre-quantized linears: quant/checkpoint.py)
        self.external_weights: set[str] = set()
        self.allow_fused_decode = True      # tests compare against the op-by-op path by clearing it
        self.allow_decode_stack = True      # a decode step's layers in one C++ call, where the class has one
        self._stack_key, self._stack = None, None
        self.build()
        self._sources = {src: (c, shard) for c in self.components() for src, shard in c.source_prefixes()}

    # ---- what an architecture provides -----------------------------------------------------------------------
    @classmethod
    def supports(cls, cfg) -> tuple[bool, str]:
        """(False, why) for a config of this model_type that the class cannot run (the generic path serves it)."""
        return True, ""

    @classmethod
    def parallel_refusal(cls, cfg, world_size: int, moe_ep: int = 1) -> Optional[str]:
        """Why `cfg` cannot be split over `world_size` ranks, the experts over `moe_ep` slots (None: it can)."""
        return None

    def build(self) -> None:
        raise NotImplementedError

    # ---- components ------------------------------------------------------------------------------------------
    def components(self) -> list[Component]:
        return list(walk(self))

    def linears(self) -> list:
        """Every linear layer (the weights quantization and FRACTAL_NZ casting replace), lm_head excluded."""
        from ..layers.linear import LinearBase
        return [c for c in self.components() if isinstance(c, LinearBase)]

    @property
    def embed(self):
        """The embedding table (a tensor, or the QuantizedWeight shared with a tied lm_head)."""
        return self.embed_tokens.weight

    @embed.setter
    def embed(self, value):
        self.embed_tokens.weight = value

    @property
    def lm_head(self):
        return self.head.weight

    @lm_head.setter
    def lm_head(self, value):
        if self.tied:
            self.embed_tokens.weight = value
        else:
            self.head.weight = value

    @property
    def tied(self) -> bool:
        return getattr(self.head, "tied_to", None) is not None

    # ---- weights ---------------------------------------------------------------------------------------------
    def _resolve(self, name: str):
        prefix, _, leaf = name.rpartition(".")
        hit = self._sources.get(prefix)
        return None if hit is None else (hit[0], leaf, hit[1])

    def wants_weight(self, name: str) -> bool:
        """False for checkpoint tensors this model never reads (the loader skips them unread)."""
        return self._resolve(name) is not None

    def weight_slice(self, name: str) -> ShardSpec:
        """(dim, start, length) of this rank's part of checkpoint tensor `name`, None for the whole tensor."""
        hit = self._resolve(name)
        return None if hit is None else hit[0].shard_spec(hit[1], hit[2])

    def load_weights(self, tensors: Iterable[tuple[str, torch.Tensor]], presliced: bool = False) -> None:
        """Fills the components from checkpoint tensors; raises on missing weights. `tensors` are whole
        checkpoint tensors (this rank's part is cut here) or, with `presliced`, already this rank's part."""
        seen: set[str] = set()
        for name, t in tensors:
            hit = self._resolve(name)
            if hit is None:
                continue
            comp, leaf, shard = hit
            if leaf not in comp.leaves() and leaf not in comp.optional_leaves():
                log.debug("ignoring weight %s", name)
                continue
            if not presliced:
                t = apply_shard(t, comp.shard_spec(leaf, shard))
            covered = comp.load(leaf, t, shard)
            seen.add(name)
            if covered:
                seen.update(covered)
        missing = [n for n in self.expected_weight_names() if n not in seen and n not in self.external_weights]
        if missing:
            raise ValueError(f"weights missing from the checkpoint: {missing[:8]}{' ...' if len(missing) > 8 else ''}")

    def expected_weight_names(self) -> list[str]:
        return [f"{src}.{leaf}" for c in self.components() for src, _ in c.source_prefixes() for leaf in c.leaves()]

    def weight_bytes(self) -> int:
        """Bytes of weights read per decode step (a tied table counted once)."""
        seen, total = set(), 0
        for c in self.components():
            for t in c.tensors():
                if t.data_ptr() not in seen:
                    seen.add(t.data_ptr())
                    total += t.numel() * t.element_size()
        return total

    # ---- KV cache --------------------------------------------------------------------------------------------
    def attention_layers(self) -> list:
        return [layer.self_attn.attn for layer in self.layers]

    @property
    def windows(self) -> list[Optional[int]]:
        return [a.window for a in self.attention_layers()]

    @property
    def scale(self) -> float:
        return self.attention_layers()[0].scale

    def kv_bytes_per_block(self, block_size: int) -> int:
        el = torch.tensor([], dtype=self.kv_dtype).element_size()
        n = 0
        for a in self.attention_layers():
            shape = a.kv_cache_shape(1, block_size)
            n += 2 * int(torch.Size(shape).numel())
        return n * el

    def allocate_kv(self, num_blocks: int, block_size: int) -> list:
        out = []
        for a in self.attention_layers():
            shape = a.kv_cache_shape(num_blocks, block_size)
            out.append((torch.zeros(shape, dtype=self.kv_dtype, device=self.device),
                        torch.zeros(shape, dtype=self.kv_dtype, device=self.device)))
        return out

    # ---- forward ---------------------------------------------------------------------------------------------
    def rotary_embeddings(self) -> list[RotaryEmbedding]:
        seen: dict[int, RotaryEmbedding] = {}
        for layer in self.layers:
            r = getattr(layer.self_attn, "rotary", None)
            if r is not None:
                seen.setdefault(id(r), r)
        return list(seen.values())

    def ensure_positions(self, max_pos: int) -> None:
        for r in self.rotary_embeddings():
            r.ensure_positions(max_pos)

    @property
    def fused_decode_attention(self) -> bool:
        """Decode steps go through the op table's one-call rope + KV write + attention where it has one for this
        dtype (TorchOps with the own float32 CPU kernels); asked per step, the op table can be swapped."""
        has = getattr(self.ops, "has_fused_decode_attention", None)
        return self.allow_fused_decode and has is not None and has(self.kv_dtype)

    # ---- the decode step in one call (an architecture opts in with `build_decode_stack`) -----------------------
    def build_decode_stack(self, kv_caches) -> tuple[Optional[object], str]:
        """(a stack whose `run_decode_stack` replaces the decode step's layer loop, "") or (None, why not)."""
        return None, f"no C++ decode step for {self.model_type}"

    def run_decode_stack(self, stack, ctx: StepContext, h: torch.Tensor):
        raise NotImplementedError

    def decode_stack(self, kv_caches):
        """The decode stack for these KV caches, built on first use (None: the layers run from Python). Weights
        replaced after the first step need `invalidate_decode_stack()`."""
        # the first cache's address, not the list's id (a freed list's id is reused; the stack keeps its tensors
        # alive, so their addresses are not)
        key = (kv_caches[0][0].data_ptr() if kv_caches else 0, len(kv_caches), id(self.ops),
               self.fused_decode_attention)
        if key != self._stack_key:
            self._stack_key = key
            self._stack, why = self.build_decode_stack(kv_caches)
            if self._stack is None:
                log.info("decode step: layers run from Python (%s)", why)
            else:
                log.info("decode step: one C++ call for %d layers (%s)", self.num_layers, self.model_type)
        return self._stack

    def invalidate_decode_stack(self) -> None:
        self._stack_key, self._stack = None, None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta, kv_caches,
                logits_indices: torch.Tensor) -> Optional[torch.Tensor]:
        """input_ids/positions [T] on device -> float32 logits [S, vocab] for the rows in `logits_indices` (None on
        tensor-parallel ranks other than 0)."""
        ops = self.ops
        T = input_ids.shape[0]
        ctx = StepContext(ops, meta, positions, self.act_dtype, meta.is_decode and self.fused_decode_attention)
        h = self.embed_tokens.forward(ops, input_ids)
        stack = self.decode_stack(kv_caches) if meta.is_decode and self.allow_decode_stack else None
        if stack is not None:
            h, residual = self.run_decode_stack(stack, ctx, h)
        else:
            residual = None
            for layer, kv in zip(self.layers, kv_caches):
                h, residual = layer.forward(ctx, h, residual, kv)
        if logits_indices.shape[0] != T:
            h = h.index_select(0, logits_indices)
            residual = residual.index_select(0, logits_indices)
        x, _ = self.norm.add_forward(ops, h, residual)
        return self.head.forward(ops, x)
