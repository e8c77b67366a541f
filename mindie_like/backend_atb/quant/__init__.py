"""Weight-only quantization (W8A16, W4A16) for backend_atb: quantized weights with their own matmul dispatch.

Public surface:
    quantize_linear_weight(weight, scheme, group_size) -> QuantizedWeight   (scheme "w8a16" | "w4a16")
    QuantizedWeight.linear(x, bias)   (also reached through torch.nn.functional.linear / embedding)
    linear(x, weight, bias)           generic: dense tensor or QuantizedWeight
    QuantPolicy / measure_crossover   per-step choice quant vs dense
See docs/quantization.md.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .policy import QuantPolicy, dense_allowed, measure_crossover
from .quantize import (dequantize_int4, dequantize_int8, pack_nibbles, quantize_int4_grouped,
                       quantize_int8_per_channel, unpack_nibbles)
from .weight import (InputPermutedWeight, Int4Weight, Int8Weight, QuantizedWeight, backend_for, normalize_scheme,
                     quantize_linear_weight)


def linear(x: torch.Tensor, weight, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x @ weight.T + bias for a dense weight or a QuantizedWeight."""
    if isinstance(weight, QuantizedWeight):
        return weight.linear(x, bias)
    return F.linear(x, weight, bias)


__all__ = ["QuantizedWeight", "Int8Weight", "Int4Weight", "InputPermutedWeight", "quantize_linear_weight",
           "normalize_scheme", "linear",
           "QuantPolicy", "measure_crossover", "dense_allowed", "backend_for", "quantize_int8_per_channel",
           "quantize_int4_grouped", "dequantize_int8", "dequantize_int4", "pack_nibbles", "unpack_nibbles"]
