"""Vocabulary-parallel embedding and lm_head.

Each rank holds ceil(vocab / tp) rows (the last rank's padding rows stay zero, so the logits gather has equal
parts; the padded columns are cut off after it). The embedding lookup masks the ids outside this rank's rows and
all-reduces. A tied lm_head is the embedding's table itself (one object, so quantizing it quantizes both).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .component import Component, Placement, ShardSpec, copy_into
from .distributed import all_reduce, ceil_split, gather_to_rank0


class VocabParallelEmbedding(Component):
    def __init__(self, prefix: str, vocab_size: int, hidden: int, pl: Placement):
        self.prefix, self.pl = prefix, pl
        self.vocab_size = vocab_size
        self.lo, self.hi, per = ceil_split(vocab_size, pl.par)
        self.weight = pl.empty(per, hidden)

    def leaves(self) -> list[str]:
        return ["weight"]

    def tensors(self) -> list:
        return [self.weight]

    def shard_spec(self, leaf: str, shard_id=None) -> ShardSpec:
        if self.pl.par.size == 1:
            return None
        return 0, self.lo, self.hi - self.lo

    def load(self, leaf: str, tensor: torch.Tensor, shard_id=None) -> None:
        dst = self.weight
        copy_into(dst.narrow(0, 0, tensor.shape[0]) if tensor.shape[0] < dst.shape[0] else dst, tensor,
                  f"{self.prefix}.{leaf}")

    def forward(self, ops, input_ids: torch.Tensor) -> torch.Tensor:
        act = self.pl.act_dtype
        if self.pl.par.size == 1:
            return F.embedding(input_ids, self.weight).to(act)
        lo, hi = self.lo, self.hi
        mask = (input_ids >= lo) & (input_ids < hi)
        local = F.embedding((input_ids - lo).clamp(0, hi - lo - 1), self.weight)
        local = local.to(act) * mask[:, None].to(act)
        return all_reduce(local, self.pl.par)


class ParallelLMHead(VocabParallelEmbedding):
    """Logits over this rank's vocabulary rows, gathered to rank 0. `tied_to`: share the embedding's table (and
    read nothing from the checkpoint)."""

    def __init__(self, prefix: str, vocab_size: int, hidden: int, pl: Placement,
                 tied_to: Optional[VocabParallelEmbedding] = None):
        self.tied_to = tied_to
        if tied_to is None:
            super().__init__(prefix, vocab_size, hidden, pl)
        else:
            self.prefix, self.pl, self.vocab_size = prefix, pl, vocab_size
            self.lo, self.hi = tied_to.lo, tied_to.hi

    @property
    def weight(self):
        return self.tied_to.weight if self.tied_to is not None else self._weight

    @weight.setter
    def weight(self, value):
        if self.tied_to is not None:
            self.tied_to.weight = value
        else:
            self._weight = value

    def leaves(self) -> list[str]:
        return [] if self.tied_to is not None else ["weight"]

    def tensors(self) -> list:
        return [] if self.tied_to is not None else [self.weight]

    def forward(self, ops, x: torch.Tensor) -> Optional[torch.Tensor]:
        """float32 logits [S, vocab] on rank 0 (None on the other ranks)."""
        own = getattr(ops, "logits", None)          # an op table's own float32 logits (TorchOps.logits)
        logits = own(x, self.weight) if own is not None else ops.linear(x, self.weight).float()
        if self.pl.par.size == 1:
            return logits
        full = gather_to_rank0(logits, self.pl.par)
        return None if full is None else full[:, : self.vocab_size]
