"""Weight-only quantization while the checkpoint streams in (`quantization` w8a16 / w4a16 on a float or FP8
safetensors checkpoint).

Built this way, the model never holds its float linears all at once: each linear's weight is a meta tensor until
its first checkpoint part arrives, is allocated then, and is replaced by its `QuantizedWeight` as soon as its last
part (gate and up, q/k/v, one expert's halves) is in. With the checkpoint's tensors in name order a linear's parts
come together, so the float weights held at any moment are one linear's, at most one layer's. An FP8 tensor is
dequantized on its own as it streams (fp8_block.Fp8BlockStream) before it gets here.

The result is the same as quantizing the loaded float model afterwards (the same function on the same float
rows, per output row / per group, which never mixes rows), so `quantize_model` then only takes these weights in
(policy, dense copies) and quantizes what is not a linear (lm_head, a tied embedding).
"""
from __future__ import annotations

import logging
from typing import Optional

import torch

from ...engine.types import NO_QUANTIZATION
from .weight import normalize_scheme

log = logging.getLogger(__name__)


class LoadTimeQuantizer:
    """`Placement.load_quant`: allocates a linear's float weight when its first part loads (`float_buffer`) and
    quantizes it when its last part is in (`finish`). Counts the float bytes: `held_bytes` now, `peak_bytes` the
    most at once, `float_bytes` all that passed through."""

    def __init__(self, scheme: str, group_size: int, dtype: torch.dtype, device):
        self.scheme, self.group_size, self.dtype, self.device = normalize_scheme(scheme), group_size, dtype, device
        self.held_bytes = self.peak_bytes = self.float_bytes = 0
        self.quantized = 0

    def float_buffer(self, lin) -> torch.Tensor:
        w = lin.pl.empty(lin.out_features, lin.in_features)
        n = w.numel() * w.element_size()
        self.held_bytes += n
        self.float_bytes += n
        self.peak_bytes = max(self.peak_bytes, self.held_bytes)
        return w

    def finish(self, lin):
        """`lin`'s quantized weight (its float one when the linear is not quantizable, e.g. MLA's kv_b_proj)."""
        w = lin.weight
        self.held_bytes -= w.numel() * w.element_size()
        if not getattr(lin, "quantizable", True):
            return w
        from .model import quantize_one
        q = quantize_one(w, self.scheme, self.group_size, self.dtype, self.device, name=lin.prefix)
        self.quantized += q is not w
        return q

    def describe(self) -> str:
        return (f"{self.quantized} linears quantized to {self.scheme} as they loaded; float weights held at once "
                f"at most {self.peak_bytes / 2**20:.1f} MiB of {self.float_bytes / 2**20:.1f} MiB loaded")


def load_time_quantizer(config, model_dir, dtype: torch.dtype, device) -> Optional[LoadTimeQuantizer]:
    """The quantizer for this load, None when the weights are quantized otherwise or not at all: no
    `quantization`, a pre-quantized checkpoint (its own loader), a GGUF source built from its own blocks."""
    q = config.quant
    scheme = str(q.scheme or "").strip().lower()
    if not scheme or scheme in NO_QUANTIZATION or scheme == "gguf":
        return None
    from . import checkpoint
    if checkpoint.detect(model_dir) is not None:
        return None
    if q.from_gguf:
        from ..weights import find_gguf
        if find_gguf(config.model_path) is not None:
            return None
    return LoadTimeQuantizer(scheme, q.group_size, dtype, device)
