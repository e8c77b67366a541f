"""Optional C++ CPU kernels, built once on first use with torch.utils.cpp_extension (needs a C++ compiler).

`bf16_linear(x, w, b)`: small-batch (M <= 8) bf16-weight GEMV for x86 CPUs with AVX2+FMA but without native bf16
(no AVX512-BF16/AMX). There torch's bf16 matmul at batch 1 runs well below memory bandwidth; this kernel streams the
weights once, widening bf16 to fp32 with a shift. Everything falls back to torch when the kernel is unavailable:
no compiler, not x86/AVX2, or MINDIE_LIKE_CPU_KERNELS=0. Built into $MINDIE_LIKE_CACHE/torch_extensions.
"""
from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

MAX_ROWS = 8
_SRC = Path(__file__).resolve().parent / "csrc" / "bf16_gemv.cpp"


def wanted() -> bool:
    from .device import cpu_flags, cpu_has_fast_bf16
    if os.environ.get("MINDIE_LIKE_CPU_KERNELS", "1") in ("0", "false", "False"):
        return False
    flags = cpu_flags()
    return "avx2" in flags and "fma" in flags and not cpu_has_fast_bf16()


@functools.lru_cache(maxsize=1)
def load():
    """The compiled extension module, or None."""
    if not wanted():
        return None
    try:
        from torch.utils.cpp_extension import load as load_ext
        from .weights import cache_root
        build = cache_root() / "torch_extensions" / "bf16_gemv"
        build.mkdir(parents=True, exist_ok=True)
        t = time.time()
        mod = load_ext(name="mindie_like_bf16_gemv", sources=[str(_SRC)], build_directory=str(build),
                       extra_cflags=["-O3", "-mavx2", "-mfma"], verbose=False)
        if time.time() - t > 2:
            log.info("built the bf16 GEMV CPU kernel in %.0f s (once)", time.time() - t)
        return mod
    except Exception as e:  # no compiler, headers, ...: plain torch it is
        log.warning("bf16 GEMV CPU kernel unavailable (%s); using torch matmul", str(e).splitlines()[0][:200])
        return None
