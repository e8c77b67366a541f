"""FP8 block-quantized checkpoints (DeepSeek V3 / R1 / V3.1 as they ship): `float8_e4m3fn` weights with one
float32 `weight_scale_inv` per [block_n, block_k] tile (128x128), `quantization_config`:
{"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128], "activation_scheme": "dynamic"}.

The real weight is w_fp8 * scale_inv of its tile. `Fp8BlockStream` sits between the safetensors reader and the
model's loader: each `X.weight` is dequantized (to the model's dtype) as soon as its `X.weight_scale_inv` has been
read, and only the dequantized tensor reaches the model, so the model code never sees FP8. Tensor-parallel ranks
read only their slices of both: a weight slice [start, start+length) along a dim reads the scale tiles that
cover it and the dequantization starts at `start % block` inside the first tile.
`to_int8_rows` turns a dequantized weight straight into W8A16's per-output-row int8 form.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import torch

log = logging.getLogger(__name__)

SCALE_SUFFIX = "_scale_inv"


def detect(model_dir) -> Optional[tuple[int, int]]:
    """(block_n, block_k) when the folder's config declares FP8 block quantization, else None."""
    p = Path(model_dir) / "config.json"
    if not p.is_file():
        return None
    qc = (json.loads(p.read_text()).get("quantization_config") or {})
    if str(qc.get("quant_method", "")).lower() != "fp8":
        return None
    block = qc.get("weight_block_size")
    if not block or len(block) != 2:
        raise ValueError("FP8 checkpoint without a 2-D weight_block_size: per-tensor FP8 is not supported")
    if str(qc.get("fmt", "e4m3")).lower() != "e4m3":
        raise ValueError(f"FP8 format {qc.get('fmt')!r} is not supported (e4m3 only)")
    return int(block[0]), int(block[1])


def dequantize(w: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int], dtype: torch.dtype,
               offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """w [n, k] float8_e4m3fn, scale_inv [tiles_n, tiles_k] covering it from `offset` (rows, cols) inside the first
    tile -> [n, k] in `dtype`."""
    n, k = w.shape
    bn, bk = block
    r0, c0 = offset
    s = scale_inv.float().repeat_interleave(bn, 0).repeat_interleave(bk, 1)
    if s.shape[0] < r0 + n or s.shape[1] < c0 + k:
        raise ValueError(f"scale {tuple(scale_inv.shape)} does not cover weight {tuple(w.shape)} at {offset}")
    return (w.float() * s[r0:r0 + n, c0:c0 + k]).to(dtype)


def quantize(w: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse, for writing test checkpoints: float [n, k] -> (float8_e4m3fn [n, k], scale_inv [tiles])."""
    n, k = w.shape
    bn, bk = block
    tn, tk = -(-n // bn), -(-k // bk)
    pad = torch.zeros(tn * bn, tk * bk, dtype=torch.float32)
    pad[:n, :k] = w.float()
    tiles = pad.view(tn, bn, tk, bk)
    amax = tiles.abs().amax(dim=(1, 3)).clamp(min=1e-12)
    scale_inv = amax / torch.finfo(torch.float8_e4m3fn).max
    q = (tiles / scale_inv[:, None, :, None]).to(torch.float8_e4m3fn).view(tn * bn, tk * bk)[:n, :k]
    return q.contiguous(), scale_inv


def to_int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A dequantized weight [n, k] -> (int8 [n, k], float32 scale [n]): W8A16's symmetric per-row form."""
    wf = w.float()
    scale = (wf.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(wf / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


class Fp8BlockStream:
    """Wraps the loader's `wanted` / `slicer` and its tensor stream for an FP8 block checkpoint."""

    def __init__(self, block: tuple[int, int], dtype: torch.dtype,
                 wanted: Optional[Callable[[str], bool]] = None,
                 slicer: Optional[Callable[[str], Optional[tuple[int, int, int]]]] = None):
        self.block, self.dtype = block, dtype
        self._wanted, self._slicer = wanted, slicer
        self.dequantized = 0

    @staticmethod
    def _weight_of(name: str) -> Optional[str]:
        return name[: -len(SCALE_SUFFIX)] if name.endswith(".weight" + SCALE_SUFFIX) else None

    def wanted(self, name: str) -> bool:
        base = self._weight_of(name)
        return self._wanted is None or self._wanted(base or name)

    def slicer(self, name: str) -> Optional[tuple[int, int, int]]:
        """A scale's slice: the tiles covering its weight's slice."""
        base = self._weight_of(name)
        spec = self._slicer(base or name) if self._slicer is not None else None
        if base is None or spec is None:
            return spec
        dim, start, length = spec
        b = self.block[dim]
        first, last = start // b, -(-(start + length) // b)
        return dim, first, last - first

    def _offset(self, name: str) -> tuple[int, int]:
        spec = self._slicer(name) if self._slicer is not None else None
        if spec is None:
            return 0, 0
        dim, start, _ = spec
        off = [0, 0]
        off[dim] = start % self.block[dim]
        return off[0], off[1]

    def take(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        weights: dict[str, torch.Tensor] = {}
        scales: dict[str, torch.Tensor] = {}
        for name, t in tensors:
            base = self._weight_of(name)
            if base is not None:
                scales[base] = t
            elif t.dtype == torch.float8_e4m3fn:
                weights[name] = t
            else:
                yield name, t
                continue
            key = base or name
            if key in weights and key in scales:
                self.dequantized += 1
                yield key, dequantize(weights.pop(key), scales.pop(key), self.block, self.dtype, self._offset(key))
        if weights:
            raise ValueError(f"FP8 weights without their weight_scale_inv: {sorted(weights)[:4]}")
        # scales of weights this model never reads (MTP layers) were skipped unread by `wanted`
