"""Where torch's CPU weight-only int8 kernel (``aten._weight_int8pack_mm``) is safe to call, on this CPU.

Its vectorized paths read the activations and weights in fixed steps along K, with aligned loads, and never handle
a remainder: on a shape or pointer outside their step they read past the row (wrong results) or fault (SIGSEGV).
Measured on torch 2.13 (tools/probe_torch_quant_kernels.py, findings in docs/quantization.md):

==================================  ===========  ===================================================
ATen CPU capability                 dtype        needs
==================================  ===========  ===================================================
AVX512 (x86 with AVX512F/BW/VL/DQ)  bfloat16     K % 16 == 0; activations 32-, weights 16-byte aligned
AVX2                                bfloat16     K % 8 == 0; activations 16-byte aligned
any, on aarch64 (NEON path)         every dtype  K % 8 == 0
x86, float32 / float16              --           nothing (a scalar loop)
==================================  ===========  ===================================================

The int4 kernel (``aten._weight_int4pack_mm_for_cpu``) loads activations one value at a time and its packed
weights unaligned: the same sweep found no failing case (N padded to 16, K a multiple of the group, as
weight.py always builds it).
"""
from __future__ import annotations

import platform
from typing import Optional

import torch


def _capability() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:       # older torch: assume the widest x86 path
        return "AVX512"


def int8pack_limits(dtype: torch.dtype) -> tuple[int, int]:
    """(K multiple, activation alignment in bytes) that `_weight_int8pack_mm` needs for activations of `dtype`."""
    if platform.machine().lower() in ("aarch64", "arm64"):
        return 8, 1
    if dtype != torch.bfloat16:
        return 1, 1
    cap = _capability()
    if cap.startswith("AVX512"):
        return 16, 32
    if cap.startswith("AVX2"):
        return 8, 16
    return 1, 1


def int8pack_refusal(dtype: torch.dtype, in_features: int) -> Optional[str]:
    """Why torch's int8 kernel cannot take this weight (None when it can)."""
    k_step, _ = int8pack_limits(dtype)
    if in_features % k_step:
        return (f"torch {torch.__version__.split('+')[0]}'s int8 kernel ({_capability()} path, "
                f"{str(dtype).replace('torch.', '')}) needs K % {k_step} == 0, K = {in_features}")
    return None
