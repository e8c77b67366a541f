"""The base of every layer: a named part of the model that owns some checkpoint tensors.

Layers are plain objects, not nn.Modules (no module-call overhead per layer; the op table does the math). Each one
knows its checkpoint prefix (`model.layers.0.self_attn.o_proj`), which leaves it reads (`weight`, `bias`), what
part of each checkpoint tensor this rank reads (`shard_spec`: the loader reads only those bytes) and how to copy
it in (`load`). The model finds its components by walking its attributes (`walk`), as nn.Module does.
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch

class MultiSlice:
    """Parts of a checkpoint tensor, each a tuple of slices (one per leading dimension), concatenated along
    `cat_dim` (a fused expert tensor's gate and up rows of this rank)."""

    def __init__(self, parts: list[tuple], cat_dim: int = 0):
        self.parts, self.cat_dim = parts, cat_dim

    def take(self, get) -> torch.Tensor:
        """`get(index)` reads one part (safetensors' get_slice(...)[index], or a tensor's own indexing)."""
        ts = [get(index) for index in self.parts]
        return ts[0] if len(ts) == 1 else torch.cat(ts, dim=self.cat_dim)


# (dim, start, length) of a checkpoint tensor, a MultiSlice, or None: all of it
ShardSpec = Optional[object]


def apply_shard(t: torch.Tensor, spec: ShardSpec) -> torch.Tensor:
    """This rank's part of a whole checkpoint tensor."""
    if spec is None:
        return t
    if isinstance(spec, MultiSlice):
        return spec.take(lambda index: t[index])
    return t.narrow(*spec)


class Component:
    """`sources`: the checkpoint prefixes this component reads, with the shard id each one fills (a fused qkv
    projection reads `q_proj`, `k_proj`, `v_proj` as shards "q", "k", "v"); by default its own prefix."""
    prefix: str = ""
    sources: Optional[list] = None

    def source_prefixes(self) -> list[tuple[str, object]]:
        return self.sources if self.sources is not None else [(self.prefix, None)]

    def leaves(self) -> list[str]:
        """The leaf names (`weight`, `bias`, ...) this component expects from the checkpoint under its prefix."""
        return []

    def optional_leaves(self) -> list[str]:
        """Leaves read when the checkpoint has them, never expected (another layout of the same weights)."""
        return []

    def shard_spec(self, leaf: str, shard_id=None) -> ShardSpec:
        return None

    def load(self, leaf: str, tensor: torch.Tensor, shard_id=None):
        """Copies this rank's part in. May return the checkpoint names the tensor stands for (a fused layout
        covering per-part names), which are then not expected any more."""
        raise NotImplementedError(f"{type(self).__name__} {self.prefix}: no weight {leaf!r}")

    def tensors(self) -> list:
        """The tensors (or QuantizedWeights) this component reads per step, for `weight_bytes`."""
        return []


def copy_into(dst: torch.Tensor, src: torch.Tensor, name: str) -> None:
    if tuple(dst.shape) != tuple(src.shape):
        raise ValueError(f"weight {name}: checkpoint shape {tuple(src.shape)} != expected {tuple(dst.shape)}")
    dst.copy_(src)


def walk(obj, seen: Optional[set] = None) -> Iterator[Component]:
    """Every Component reachable from `obj`'s attributes (lists and tuples included), each once, in order."""
    seen = set() if seen is None else seen
    children = obj if isinstance(obj, (list, tuple)) else list(vars(obj).values()) if hasattr(obj, "__dict__") \
        else []
    for c in children:
        if id(c) in seen:
            continue
        if isinstance(c, Component):
            seen.add(id(c))
            yield c
            yield from walk(c, seen)
        elif isinstance(c, (list, tuple)) or (hasattr(c, "__dict__") and isinstance(c, Module)):
            seen.add(id(c))
            yield from walk(c, seen)


class Module:
    """A grouping of components with no checkpoint tensors of its own (a decoder layer, an attention block)."""


class Placement:
    """Where a model's weights live and how they split: weight dtype, activation dtype (norms, biases, KV cache),
    device, and this rank's ParallelSpec. `load_quant` (quant/load_time.py): linears are quantized while the
    checkpoint streams in, so their float weights are allocated one linear at a time at load, not at build."""

    def __init__(self, dtype: torch.dtype, act_dtype: torch.dtype, device: torch.device, par, load_quant=None):
        self.dtype, self.act_dtype, self.device, self.par = dtype, act_dtype, device, par
        self.load_quant = load_quant

    def empty(self, *shape) -> torch.Tensor:
        """A weight (zeroed: padding rows of a split that does not divide stay zero)."""
        return torch.zeros(*shape, dtype=self.dtype, device=self.device)

    def linear_weight(self, *shape) -> torch.Tensor:
        """A linear's float weight: allocated now, or (quantizing at load) a meta tensor that only says its shape
        until the linear's first checkpoint part arrives (LinearBase.fill_rows)."""
        if self.load_quant is None:
            return self.empty(*shape)
        return torch.empty(*shape, dtype=self.dtype, device="meta")

    def small(self, *shape) -> torch.Tensor:
        """A norm weight or a bias: kept in the activation dtype."""
        return torch.zeros(*shape, dtype=self.act_dtype, device=self.device)
