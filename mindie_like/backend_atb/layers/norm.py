"""RMSNorm (weight kept in the activation dtype), with the residual-add fused variant of the op table."""
from __future__ import annotations

import torch

from .component import Component, Placement, copy_into


class RMSNorm(Component):
    def __init__(self, prefix: str, size: int, eps: float, pl: Placement):
        self.prefix, self.eps = prefix, eps
        self.weight = pl.small(size)

    def leaves(self) -> list[str]:
        return ["weight"]

    def tensors(self) -> list:
        return [self.weight]

    def load(self, leaf: str, tensor: torch.Tensor, shard_id=None) -> None:
        copy_into(self.weight, tensor, f"{self.prefix}.{leaf}")

    def forward(self, ops, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps)

    def add_forward(self, ops, x: torch.Tensor, residual: torch.Tensor):
        """(norm(x + residual), x + residual)."""
        return ops.add_rms_norm(x, residual, self.weight, self.eps)
