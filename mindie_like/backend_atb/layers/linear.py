"""Linear layers that know their tensor-parallel split (column, merged column, qkv, row, replicated).

`weight` is a dense [out_local, in_local] tensor after loading; weight-only quantization (quant/) replaces it by
a QuantizedWeight, which the op table's `linear` dispatches to its own kernels, so the layer code is the same for
both. Each linear reads only its part of each checkpoint tensor (`shard_spec`) and copies it in (`load`).

Splits (tp = ranks, r = this rank):
  column     output rows r*out/tp ..; the output stays split (the next layer is row-parallel)
  merged     several column-parallel projections stacked (gate and up): each part split on its own
  qkv        q by heads; k/v by heads, or with fewer kv heads than ranks the one kv head this rank's query
             heads read (replicated on tp/kv ranks)
  row        input columns r*in/tp ..; partial sums all-reduced, the bias added once after
  replicated every rank holds all of it
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .component import Component, Placement, ShardSpec, copy_into
from .distributed import all_reduce


class LinearBase(Component):
    def __init__(self, prefix: str, in_local: int, out_local: int, bias: bool, pl: Placement):
        self.prefix = prefix
        self.pl = pl
        self.in_features, self.out_features = in_local, out_local
        self.weight = pl.linear_weight(out_local, in_local)
        self.bias: Optional[torch.Tensor] = pl.small(out_local) if bias else None
        self.rows_loaded = 0

    def leaves(self) -> list[str]:
        return ["weight", "bias"] if self.bias is not None else ["weight"]

    def tensors(self) -> list:
        return [t for t in (self.weight, self.bias) if t is not None]

    def part_rows(self, shard_id) -> tuple[int, int]:
        """(offset, rows) of a source's part in this rank's weight."""
        return 0, self.out_features

    def load(self, leaf: str, tensor: torch.Tensor, shard_id=None) -> None:
        off, rows = self.part_rows(shard_id)
        if leaf == "weight":
            self.fill_rows(off, rows, tensor, f"{self.prefix}.{leaf}")
            return
        if self.bias is None:
            raise ValueError(f"unexpected weight {self.prefix}.{leaf} (the config says no bias)")
        copy_into(self.bias.narrow(0, off, rows), tensor, f"{self.prefix}.{leaf}")

    def fill_rows(self, off: int, rows: int, tensor: torch.Tensor, name: str) -> None:
        """Copies rows [off, off + rows) of this rank's weight in. Quantizing at load (`pl.load_quant`), the float
        weight is allocated by the first part and quantized as soon as the last part is in."""
        lq = self.pl.load_quant
        if lq is None:
            copy_into(self.weight.narrow(0, off, rows), tensor, name)
            return
        if not isinstance(self.weight, torch.Tensor):
            raise ValueError(f"weight {name}: loaded twice (the checkpoint has it in two layouts)")
        if self.weight.is_meta:
            self.weight = lq.float_buffer(self)
        copy_into(self.weight.narrow(0, off, rows), tensor, name)
        self.rows_loaded += rows
        if self.rows_loaded >= self.out_features:
            self.weight = lq.finish(self)

    def forward(self, ops, x: torch.Tensor) -> torch.Tensor:
        return ops.linear(x, self.weight, self.bias)


class ReplicatedLinear(LinearBase):
    def __init__(self, prefix: str, in_features: int, out_features: int, bias: bool, pl: Placement):
        super().__init__(prefix, in_features, out_features, bias, pl)


class ColumnParallelLinear(LinearBase):
    def __init__(self, prefix: str, in_features: int, out_features: int, bias: bool, pl: Placement):
        tp = pl.par.size
        if out_features % tp:
            raise ValueError(f"{prefix}: {out_features} output features do not split over {tp} ranks")
        super().__init__(prefix, in_features, out_features // tp, bias, pl)

    def shard_spec(self, leaf: str, shard_id=None) -> ShardSpec:
        if self.pl.par.size == 1:
            return None
        return 0, self.pl.par.rank * self.out_features, self.out_features


class MergedColumnParallelLinear(LinearBase):
    """Projections stacked by rows (gate and up): `sources` [(checkpoint prefix, part index)], `sizes` the
    parts' full output sizes; each part is split over the ranks on its own."""

    def __init__(self, prefix: str, in_features: int, sizes: Sequence[int], bias: bool, pl: Placement,
                 sources: Sequence[str]):
        tp = pl.par.size
        if any(s % tp for s in sizes):
            raise ValueError(f"{prefix}: output sizes {list(sizes)} do not split over {tp} ranks")
        self.local_sizes = [s // tp for s in sizes]
        self.offsets = [sum(self.local_sizes[:i]) for i in range(len(sizes))]
        super().__init__(prefix, in_features, sum(self.local_sizes), bias, pl)
        self.sources = [(src, i) for i, src in enumerate(sources)]

    def part_rows(self, shard_id) -> tuple[int, int]:
        return self.offsets[shard_id], self.local_sizes[shard_id]

    def shard_spec(self, leaf: str, shard_id=None) -> ShardSpec:
        if self.pl.par.size == 1:
            return None
        n = self.local_sizes[shard_id]
        return 0, self.pl.par.rank * n, n


class QKVParallelLinear(LinearBase):
    """q, k and v stacked by rows; `sources` the three checkpoint prefixes."""

    def __init__(self, prefix: str, hidden: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool,
                 pl: Placement, sources: Sequence[str]):
        tp = pl.par.size
        self.head_dim = head_dim
        self.num_kv_heads_total = num_kv_heads
        self.num_heads = num_heads // tp
        self.num_kv_heads = max(1, num_kv_heads // tp)      # replicated when there are fewer kv heads than ranks
        self.q_size, self.kv_size = self.num_heads * head_dim, self.num_kv_heads * head_dim
        super().__init__(prefix, hidden, self.q_size + 2 * self.kv_size, bias, pl)
        self.sources = list(zip(sources, ("q", "k", "v")))

    def part_rows(self, shard_id) -> tuple[int, int]:
        return {"q": (0, self.q_size), "k": (self.q_size, self.kv_size),
                "v": (self.q_size + self.kv_size, self.kv_size)}[shard_id]

    def shard_spec(self, leaf: str, shard_id=None) -> ShardSpec:
        par = self.pl.par
        if par.size == 1:
            return None
        if shard_id == "q":
            return 0, par.rank * self.q_size, self.q_size
        if self.num_kv_heads_total < par.size:
            head = par.rank * self.num_kv_heads_total // par.size
            return 0, head * self.head_dim, self.head_dim
        return 0, par.rank * self.kv_size, self.kv_size


class RowParallelLinear(LinearBase):
    """Input columns split; `forward` all-reduces the partial sums (unless `reduce` is False: the caller sums
    several partial results first) and adds the bias once, after."""

    def __init__(self, prefix: str, in_features: int, out_features: int, bias: bool, pl: Placement,
                 reduce: bool = True):
        tp = pl.par.size
        if in_features % tp:
            raise ValueError(f"{prefix}: {in_features} input features do not split over {tp} ranks")
        super().__init__(prefix, in_features // tp, out_features, bias, pl)
        self.reduce = reduce

    def shard_spec(self, leaf: str, shard_id=None) -> ShardSpec:
        if self.pl.par.size == 1 or leaf != "weight":
            return None
        return 1, self.pl.par.rank * self.in_features, self.in_features

    def forward(self, ops, x: torch.Tensor) -> torch.Tensor:
        y = ops.linear(x, self.weight)
        if self.reduce and self.pl.par.size > 1:
            y = all_reduce(y, self.pl.par)
        return y if self.bias is None else y + self.bias
