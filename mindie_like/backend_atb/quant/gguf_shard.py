"""A tensor-parallel rank's part of a GGUF tensor held as blocks (`gguf.Blocks`) or int4 / float parts
(`gguf.Parts`): the same (dim, start, length) the layer's `shard_spec` gives for a safetensors tensor.

Rows (column-parallel q/k/v, gate/up, a vocabulary shard) split anywhere; input columns (row-parallel o / down)
split at group boundaries only, so each rank keeps whole blocks with their scales (refused otherwise). A
vocabulary shard shorter than the rank's rows is padded with zero-scale rows (they give zero logits, as the
dense path's zero rows do)."""
from __future__ import annotations

from typing import Optional

import torch


def shard(p, spec, rows: Optional[int] = None):
    """`p` (Blocks or Parts) narrowed to `spec` (None: whole), then padded to `rows` rows when given."""
    from .gguf import Blocks, Parts
    if spec is not None:
        if not isinstance(spec, tuple):
            raise NotImplementedError(f"GGUF tensor {p.name}: a multi-part shard of blocks")
        dim, start, length = spec
        if isinstance(p, Blocks):
            p = Blocks(p.name, p.fmt, *_narrow(p.name, p.q, p.scale, p.zero, p.group, dim, start, length), p.group)
        elif p.is_int4:
            q, s, z = _narrow(p.name, p.q, p.scale, p.zero, 32, dim, start, length)
            p = Parts(p.name, p.fmt, q, s, z)
        else:
            p = Parts(p.name, p.fmt, w=p.float().narrow(dim, start, length).contiguous())
    if rows is not None and _rows(p) < rows:
        p = _pad_rows(p, rows)
    return p


def _narrow(name, q, scale, zero, group, dim, start, length):
    if dim == 0:
        cut = lambda t: None if t is None else t.narrow(0, start, length).contiguous()     # noqa: E731
        return cut(q), cut(scale), cut(zero)
    if start % group or length % group:
        raise ValueError(f"GGUF tensor {name}: this rank's input columns {start}..{start + length} do not fall on "
                         f"its {group}-wide blocks; use a worldSize that splits them on block boundaries")
    gcut = lambda t: None if t is None else t.narrow(1, start // group, length // group).contiguous()  # noqa: E731
    return q.narrow(1, start, length).contiguous(), gcut(scale), gcut(zero)


def _rows(p) -> int:
    return int(p.q.shape[0]) if p.q is not None else int(p.float().shape[0])


def _pad_rows(p, rows: int):
    from .gguf import Blocks, Parts

    def pad(t):
        return None if t is None else torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])
    if isinstance(p, Blocks):
        return Blocks(p.name, p.fmt, pad(p.q), pad(p.scale), pad(p.zero), p.group)
    if p.is_int4:
        return Parts(p.name, p.fmt, pad(p.q), pad(p.scale), pad(p.zero))
    return Parts(p.name, p.fmt, w=pad(p.float()))
