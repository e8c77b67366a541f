"""This process's place in a tensor-parallel group, and the collectives the layers call.

With one rank none of the collectives runs: every layer checks `par.size > 1` first."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class ParallelSpec:
    """This process's place in a tensor-parallel group (global rank 0 samples and receives the logits).

    `moe_ep`: how many expert-parallel slots the MoE blocks split their experts over (1: none, each expert's
    intermediate dimension is split over all ranks instead — expert-TP, the default); the ranks of a slot split
    its experts' intermediate dimension (moe_tp = size / moe_ep)."""
    rank: int = 0
    size: int = 1
    group: object = None        # torch.distributed process group of the model's collectives (None: the world)
    moe_ep: int = 1


def all_reduce(x: torch.Tensor, par: ParallelSpec) -> torch.Tensor:
    torch.distributed.all_reduce(x, group=par.group)
    return x


def gather_to_rank0(x: torch.Tensor, par: ParallelSpec) -> Optional[torch.Tensor]:
    """Rank 0 gets the parts of every rank concatenated along the last dimension; the others get None."""
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(par.size)] if par.rank == 0 else None
    torch.distributed.gather(x, parts, dst=0, group=par.group)
    return None if parts is None else torch.cat(parts, dim=-1)


def split_range(total: int, par: ParallelSpec) -> tuple[int, int]:
    """[lo, hi) of an even split of `total` (which the caller checked divides)."""
    per = total // par.size
    return par.rank * per, (par.rank + 1) * per


def ceil_split(total: int, par: ParallelSpec) -> tuple[int, int, int]:
    """(lo, hi, per) of a ceil split: every rank holds `per` rows, the last ones fewer real ones (zero padding)."""
    per = math.ceil(total / par.size)
    lo = min(total, par.rank * per)
    return lo, min(total, lo + per), per
