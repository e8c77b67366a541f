"""Grouped int8 weights: w = q * s (+ z) per group of 16 or 32 input channels, the exact form of GGUF's Q8_0,
Q5_0 and Q6_K blocks (and of Q4_0 / Q4_1 / Q4_K, whose zeros it keeps).

A GGUF block stores small integers and a scale per 32 values (Q8_0: d * q, Q5_0: d * (q - 16)) or per 16 (Q6_K:
d * sc_j * (q - 32), with d * sc_j exact in float32); widened to one int8 per value with a float32 scale per group,
every weight equals the file's own dequantization bit for bit. The matmul is the own block kernel
(csrc/block_gemm.cpp) at the instruction set `cpu_kernels.isa()` picks (portable / AVX2 / AVX512), float32 math;
without the extension: dequantize + matmul. Bytes read per weight: 1 + 4/group (+ 4/group with zeros), against
0.69 (Q5_0), 0.82 (Q6_K) and 1.06 (Q8_0) in the file.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .weight import QuantizedWeight

GROUPS = (16, 32)


class BlockInt8Weight(QuantizedWeight):
    scheme = "w8a16"

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, zero: Optional[torch.Tensor], group: int, *,
                 dtype: torch.dtype = torch.bfloat16, device="cpu", backend: Optional[str] = None,
                 isa: Optional[str] = None):
        if q.dtype != torch.int8 or q.dim() != 2:
            raise ValueError(f"block int8 weight must be int8 [N, K], got {q.dtype} {tuple(q.shape)}")
        N, K = q.shape
        if group not in GROUPS or K % group:
            raise ValueError(f"block int8 weight: group {group} (one of {GROUPS}) must divide K={K}")
        if scale.shape != (N, K // group) or (zero is not None and zero.shape != scale.shape):
            raise ValueError(f"block int8 scale/zero must be [N, K/group]=({N}, {K // group})")
        super().__init__(N, K, dtype, device, backend)
        self.group = group
        self.q = q.to(self.device).contiguous()
        self.scale = scale.to(device=self.device, dtype=torch.float32).contiguous()
        self.zero = None if zero is None or not bool(zero.ne(0).any()) else \
            zero.to(device=self.device, dtype=torch.float32).contiguous()
        self._empty = torch.empty(0, dtype=torch.float32)
        mod = None
        if self.backend == "cpu":
            from .. import cpu_kernels
            mod = cpu_kernels.load()
        if mod is not None:
            from .. import cpu_kernels
            self.isa = isa or cpu_kernels.isa(mod)
            level = cpu_kernels.ISAS.index(self.isa)
            z = self.zero if self.zero is not None else self._empty
            self.kernel = f"mindie_like block_int8_linear ({self.isa})"
            self._native = lambda x, bias: mod.block_int8_linear(x, self.q, self.scale, z, group, bias, level)
        else:
            self.isa = None
            self.kernel = "dequant-matmul"

    @property
    def nbytes(self) -> int:
        n = self.q.numel() + self.scale.numel() * 4
        return n + (self.zero.numel() * 4 if self.zero is not None else 0)

    def _mm(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize(x.dtype))

    def dequantize(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        N, K, G = self.out_features, self.in_features, self.group
        w = self.q.float().reshape(N, K // G, G) * self.scale[..., None]
        if self.zero is not None:
            w = w + self.zero[..., None]
        return w.reshape(N, K).to(dtype or self.dtype)

    def embedding(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        G = self.group
        rows = self.q.index_select(0, flat).float().reshape(len(flat), -1, G) * \
            self.scale.index_select(0, flat)[..., None]
        if self.zero is not None:
            rows = rows + self.zero.index_select(0, flat)[..., None]
        return rows.reshape(*ids.shape, self.in_features).to(self.dtype)
