"""Grouped block weights at the file's own bit width: w = s * q (+ z) per group of 16 or 32 input channels, the exact
form of GGUF's Q8_0, Q5_0 and Q6_K blocks (and of Q4_0 / Q4_1 / Q4_K, whose zeros it keeps).

A GGUF block stores small integers and a scale per 32 values (Q8_0: d * q, Q5_0: d * (q - 16)) or per 16 (Q6_K:
d * sc_j * (q - 32), with d * sc_j exact in float32). Built from the signed values q (int8 [N, K]) with a float32
scale per group, every weight equals the file's own dequantization bit for bit. Stored packed at the narrowest
width holding q (4, 5, 6 or 8 bits: csrc/block_gemm.cpp's layout, nibbles + bit planes), so a matmul reads
0.5 / 0.625 / 0.75 / 1 byte per weight + 4 / group for the scales (+ 4 / group with zeros), against the
1 + 4 / group of one int8 per weight.

The matmul is the own block kernel at the instruction set `cpu_kernels.isa()` picks (portable / AVX2 / AVX512 /
AVX512-VNNI), with int8 activations (integer block dots, `cpu_kernels.block_act()`, the default) or float32 ones;
without the extension: the int8 values kept as they come, dequantize + matmul.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .weight import QuantizedWeight

GROUPS = (16, 32)
WIDTHS = (4, 5, 6, 8)


def bits_for(q: torch.Tensor) -> int:
    """The narrowest packed width whose signed range [-2^(b-1), 2^(b-1)) holds every value of q."""
    lo, hi = (int(v) for v in torch.aminmax(q)) if q.numel() else (0, 0)
    for b in WIDTHS:
        if -(1 << (b - 1)) <= lo and hi < (1 << (b - 1)):
            return b
    return 8


class BlockInt8Weight(QuantizedWeight):
    scheme = "w8a16"

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, zero: Optional[torch.Tensor], group: int, *,
                 dtype: torch.dtype = torch.bfloat16, device="cpu", backend: Optional[str] = None,
                 isa: Optional[str] = None, act: Optional[str] = None):
        if q.dtype != torch.int8 or q.dim() != 2:
            raise ValueError(f"block int8 weight must be int8 [N, K], got {q.dtype} {tuple(q.shape)}")
        N, K = q.shape
        if group not in GROUPS or K % 32:
            raise ValueError(f"block int8 weight: group {group} (one of {GROUPS}) and 32 must divide K={K}")
        if scale.shape != (N, K // group) or (zero is not None and zero.shape != scale.shape):
            raise ValueError(f"block int8 scale/zero must be [N, K/group]=({N}, {K // group})")
        super().__init__(N, K, dtype, device, backend)
        self.group = group
        self.scale = scale.to(device=self.device, dtype=torch.float32).contiguous()
        self.zero = None if zero is None or not bool(zero.ne(0).any()) else \
            zero.to(device=self.device, dtype=torch.float32).contiguous()
        self._empty = torch.empty(0, dtype=torch.float32)
        mod = None
        if self.backend == "cpu":
            from .. import cpu_kernels
            mod = cpu_kernels.load()
        self._mod = mod
        self.bits = bits_for(q)
        self.layout = None
        if mod is not None:
            self.use_kernel(isa, act, q.cpu())
        else:
            self.q = q.to(self.device).contiguous()
            self.isa = self.act = None
            self.kernel = "dequant-matmul"

    def use_kernel(self, isa: Optional[str] = None, act: Optional[str] = None, q: Optional[torch.Tensor] = None):
        """Selects the block kernel's instruction set and activation mode (default: `cpu_kernels.isa()` and
        `cpu_kernels.block_act()`, from the CPU and the environment), and packs the values in that kernel's layout:
        16-row panels for AVX512-VNNI with int8 activations, rows otherwise (csrc/block_gemm.cpp)."""
        from .. import cpu_kernels
        mod = self._mod
        self.isa = isa or cpu_kernels.isa(mod)
        self.act = act or cpu_kernels.block_act()
        layout = "panels" if (self.isa == "avx512vnni" and self.act == "int8") else "rows"
        if layout != self.layout:
            q = self.values() if q is None else q
            self.layout = layout
            bits = self.bits
            if layout == "panels":
                self.packed = mod.block_pack_panels(q, bits)
                self._planes = [self._panel_planes(t) for t in (self.scale, self.zero)]
            else:
                self.packed = mod.block_pack(q, bits)
                self._planes = [self.scale, self.zero]
            self.q = None
        level, act8, group, N, bits = cpu_kernels.ISAS.index(self.isa), self.act == "int8", self.group, \
            self.out_features, self.bits
        s, z = (p if p is not None else self._empty for p in self._planes)
        self.kernel = f"mindie_like block_linear ({self.isa}, {self.bits}-bit weights, {self.act} activations)"
        if layout == "panels":
            self._native = lambda x, bias: mod.block_linear_panels(x, self.packed, bits, N, s, z, group, bias)
        else:
            self._native = lambda x, bias: mod.block_linear(x, self.packed, bits, s, z, group, bias, level, act8)

    def _panel_planes(self, t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """[N, K/G] -> [ceil(N/16), K/G, 16] (rows past N: zero), the panels' per-group vectors of 16 rows."""
        if t is None:
            return None
        N, NG = t.shape
        Np = (N + 15) // 16 * 16
        padded = torch.zeros(Np, NG, dtype=torch.float32)
        padded[:N] = t
        return padded.reshape(Np // 16, 16, NG).transpose(1, 2).contiguous()

    @property
    def nbytes(self) -> int:
        if self.q is not None:
            return self.q.numel() + self.scale.numel() * 4 + (self.zero.numel() * 4 if self.zero is not None else 0)
        return self.packed.numel() + sum(p.numel() * 4 for p in self._planes if p is not None)

    def values(self, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The signed block values q (int8 [N, K], or the `rows` given)."""
        if self.q is not None:
            return self.q if rows is None else self.q.index_select(0, rows)
        if self.layout == "panels":
            rows = torch.arange(self.out_features) if rows is None else rows
            return self._mod.block_unpack_panels(self.packed, self.bits, rows)
        p = self.packed if rows is None else self.packed.index_select(0, rows)
        return self._mod.block_unpack(p, self.bits, self.in_features)

    def _mm(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize(x.dtype))

    def dequantize(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        N, K, G = self.out_features, self.in_features, self.group
        w = self.values().float().reshape(N, K // G, G) * self.scale[..., None]
        if self.zero is not None:
            w = w + self.zero[..., None]
        return w.reshape(N, K).to(dtype or self.dtype)

    def embedding(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        G = self.group
        rows = self.values(flat).float().reshape(len(flat), -1, G) * self.scale.index_select(0, flat)[..., None]
        if self.zero is not None:
            rows = rows + self.zero.index_select(0, flat)[..., None]
        return rows.reshape(*ids.shape, self.in_features).to(self.dtype)
