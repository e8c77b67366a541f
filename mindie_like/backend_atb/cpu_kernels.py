"""Optional C++ CPU kernels, built once on first use with torch.utils.cpp_extension (needs a C++ compiler).

AVX2+FMA code (so any x86 CPU with AVX2 runs it, AVX512 ones included), in two families that `wanted(family)`
switches separately:

* "quant", the int8/int4 weight-only matmuls: used on every CPU that can run them. torch's own int8 kernel runs
  below memory bandwidth at small batches and, on some shapes, reads out of bounds (quant/torch_cpu_limits.py).
* "float", the bf16 GEMV and the float32 norm / decode attention kernels: used on CPUs without native bf16
  (no AVX512-BF16/AMX), where torch's bf16 matmul is slow; elsewhere torch's own are as fast.

MINDIE_LIKE_CPU_KERNELS: unset (or "auto") as above; "1" forces both families on where the CPU can run them (the
tests use it to cover the own kernels on any AVX2 machine); "0" forces them off (torch's kernels everywhere).

* `bf16_dot_linear(x, w, b, isa, out_float)`: bf16 weights [N, K] as loaded x activations rounded to bf16, float32
  accumulation; AVX512-BF16 `vdpbf16ps` tiles of 4 activation rows x 4 weight rows, or the same order in portable
  C++ (csrc/bf16_dot.cpp). Chosen by `bf16_isa()` for bf16 models on CPUs with AVX512-BF16, up to
  BF16_DOT_MAX_ROWS rows (decode batches and the lm_head); outside the two families above.
* `bf16_linear(x, w, b)`: small-batch (M <= 8) bf16-weight GEMV; streams the weights once, widening bf16 to fp32
  with a shift (csrc/bf16_gemv.cpp).
* `int8_linear(x, q, scale, b)`: int8 per-output-channel weights, float32 math (csrc/quant_gemm.cpp).
* `int4_linear(x, packed, planes, group, b, act_bits)`: int4 grouped weights in the block layout of
  `pack_int4_blocks`, scale and zero planes [2, N, K/group] (bf16 or float32), activations rounded per block of 32
  to 8 or 16-bit fixed point for integer dot products (csrc/quant_gemm.cpp).
* `rms_norm_f32(x, w, eps)`, `add_rms_norm_f32(x, residual, w, eps)`: RMSNorm of float32 rows in one pass
  (csrc/norm.cpp); torch's rms_norm is several dispatched kernels per decode row.
* `rope_attention_decode_f32(...)`: a decode step's rotary embedding, paged KV-cache write and attention in one
  call per layer; `silu_mul_f32(x)`: the MLP's silu(gate) * up (csrc/decode_attn.cpp).

Everything falls back to torch when the kernels are unavailable: no compiler, not x86/AVX2, or
MINDIE_LIKE_CPU_KERNELS=0. Built once into <cache dir>/torch_extensions (mindie_like.paths.cache_dir).
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import platform
import shutil
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

MAX_ROWS = 8
_CSRC = Path(__file__).resolve().parent / "csrc"
_SOURCES = ("module.cpp",)        # includes bf16_gemv.cpp, norm.cpp, quant_gemm.cpp, decode_attn.cpp (one unit)
# -fopenmp: at::parallel_for is a header template that runs serially unless the extension itself is compiled with
# OpenMP (_OPENMP); linking it resolves to the libgomp.so.1 torch has already loaded (same soname).
# No instruction-set flags: the module loads on any x86-64 CPU; the AVX2 kernels carry a target pragma and the
# block kernels one target attribute per implementation (csrc/module.cpp), so nothing runs what the CPU lacks.
_CFLAGS = ["-O3", "-fopenmp"]
_LDFLAGS = ["-fopenmp"]


FAMILIES = ("quant", "float")


def mode() -> str:
    """MINDIE_LIKE_CPU_KERNELS as "auto", "on" or "off"."""
    v = os.environ.get("MINDIE_LIKE_CPU_KERNELS", "auto").strip().lower()
    if v in ("0", "false", "off", "no"):
        return "off"
    if v in ("1", "true", "on", "yes", "force"):
        return "on"
    return "auto"


def runnable() -> bool:
    """This CPU executes the AVX2 kernels' instructions (AVX2 + FMA; AVX512 CPUs have both)."""
    from .device import cpu_flags
    flags = cpu_flags()
    return "avx2" in flags and "fma" in flags


def _x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


# ---- block kernels (csrc/block_gemm.cpp): one implementation per instruction set, picked at run time ----------
ISAS = ("portable", "avx2", "avx512", "avx512vnni")
ACTS = ("int8", "float")


def block_act() -> str:
    """The block kernels' activations: "int8" (default: quantized per block of 32 for integer dot products) or
    "float" (MINDIE_LIKE_BLOCK_ACT=float: float32 math on the file's exact weights)."""
    v = os.environ.get("MINDIE_LIKE_BLOCK_ACT", "int8").strip().lower() or "int8"
    if v not in ACTS:
        raise ValueError(f"MINDIE_LIKE_BLOCK_ACT={v!r}: one of {', '.join(ACTS)}")
    return v


def isa(mod=None) -> str:
    """The block kernels' instruction set: the widest this CPU runs (cpuid), or MINDIE_LIKE_CPU_ISA when it names
    a narrower one ("portable" forces the plain C++ path on any machine). Logged once."""
    mod = mod or load()
    if mod is None:
        return "none"
    best = ISAS[int(mod.cpu_isa())]
    want = _wanted_isa()
    chosen = best
    if want in ISAS:
        chosen = want if ISAS.index(want) <= ISAS.index(best) else best
    key = (best, want, chosen)
    if key not in _ISA_LOGGED:
        _ISA_LOGGED.add(key)
        log.info("CPU block kernels: %s (this CPU runs up to %s%s)", chosen, best,
                 f"; MINDIE_LIKE_CPU_ISA={want}" if want else "")
    return chosen


_ISA_LOGGED: set = set()

# ---- bf16 dot products (csrc/bf16_dot.cpp): bf16 weights x bf16 activations, float32 accumulation --------------
BF16_ISAS = ("portable", "avx512bf16")
BF16_DOT_MAX_ROWS = 16      # more rows (prefill) run torch's matmul: its blocking wins once compute-bound


def _wanted_isa() -> str:
    want = os.environ.get("MINDIE_LIKE_CPU_ISA", "").strip().lower()
    if want and want not in ISAS + BF16_ISAS:
        raise ValueError(f"MINDIE_LIKE_CPU_ISA={want!r}: one of {', '.join(ISAS + BF16_ISAS[1:])}")
    return want


def bf16_isa(mod=None) -> str:
    """The instruction set of the bf16 dot-product kernel that bf16 weights run on, or "none" (torch's matmul):
    "avx512bf16" where the CPU has AVX512-BF16 (cpuid); elsewhere "none". MINDIE_LIKE_CPU_ISA=portable forces the
    plain C++ kernel (tests of the fallback on any machine); a narrower ISA named there (avx2, avx512, avx512vnni:
    no bf16 dot product) gives "none". Logged once."""
    mod = mod or load()
    if mod is None or not hasattr(mod, "cpu_bf16_isa"):
        return "none"
    best = BF16_ISAS[int(mod.cpu_bf16_isa())]
    want = _wanted_isa()
    if want == "portable":
        chosen = "portable"
    elif want and want != "avx512bf16":
        chosen = "none"
    else:
        chosen = best if best != "portable" else "none"
    key = ("bf16", best, want, chosen)
    if key not in _ISA_LOGGED:
        _ISA_LOGGED.add(key)
        log.info("CPU bf16 matmul kernel: %s (this CPU runs up to %s%s)",
                 {"none": "torch's"}.get(chosen, chosen), best, f"; MINDIE_LIKE_CPU_ISA={want}" if want else "")
    return chosen


def wanted(family: str = "float") -> bool:
    """Whether the own kernels of `family` ("quant" or "float", see the module doc) should run on this CPU."""
    if family not in FAMILIES:
        raise ValueError(f"unknown CPU kernel family {family!r} ({FAMILIES})")
    m = mode()
    if m == "off" or not runnable():
        return False
    if m == "on" or family == "quant":
        return True
    from .device import cpu_has_fast_bf16
    return not cpu_has_fast_bf16()


def load():
    """The compiled extension module, or None (not x86-64, switched off, or no compiler)."""
    if mode() == "off" or not _x86_64():
        return None
    return _build()


@contextlib.contextmanager
def _build_lock(build: Path):
    """Serializes builds with an flock, which the kernel drops when its holder dies. torch's own `lock` file is
    left behind by a build that was killed, and then every later load waits on it forever; while we hold the
    flock no other build is running, so a `lock` file found then is such a leftover and is removed."""
    with open(build / "build.flock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            stale = build / "lock"
            if stale.exists():
                log.warning("removing a CPU-kernel build lock left by an interrupted build (%s)", stale)
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build_dir() -> Path:
    """<cache dir>/torch_extensions/cpu_kernels-<key>. The key covers everything torch writes into the build's
    ninja file besides the sources' path: the sources' content (the included kernel files are not seen by torch's
    own versioning), the flags, and torch's and Python's include and library folders (one per environment). The
    sources are compiled from a copy inside that folder, so every checkout of the same code on the same
    environment reuses one build: with the checkout's own path in the ninja file, two checkouts sharing the cache
    rebuilt it in turn (a minute each time)."""
    import sysconfig
    from torch.utils import cpp_extension
    from ..paths import cache_dir
    env = [*cpp_extension.include_paths(), *cpp_extension.library_paths(), str(sysconfig.get_path("include"))]
    key = hashlib.sha256()
    for p in _source_files():
        key.update(p.name.encode() + b"\0" + p.read_bytes())
    key.update(" ".join(_CFLAGS + _LDFLAGS + env).encode())
    return cache_dir() / "torch_extensions" / f"cpu_kernels-{key.hexdigest()[:12]}"


def _source_files() -> list[Path]:
    return sorted(_CSRC.glob("*.cpp")) + sorted(_CSRC.glob("*.h"))


def _copy_sources(build: Path) -> Path:
    """The kernel sources copied once into `build`/src (under the build lock; the folder's name is their hash)."""
    src = build / "src"
    done = src / ".complete"
    if not done.exists():
        src.mkdir(parents=True, exist_ok=True)
        for p in _source_files():
            shutil.copyfile(p, src / p.name)
        done.touch()
    return src


@functools.lru_cache(maxsize=1)
def _build():
    try:
        from torch.utils.cpp_extension import load as load_ext
        build = _build_dir()
        build.mkdir(parents=True, exist_ok=True)
        t = time.time()
        with _build_lock(build):
            src = _copy_sources(build)
            mod = load_ext(name="mindie_like_cpu_kernels", sources=[str(src / s) for s in _SOURCES],
                           build_directory=str(build), extra_cflags=_CFLAGS, extra_ldflags=_LDFLAGS, verbose=False)
        if time.time() - t > 2:
            log.info("built the CPU kernels (bf16 GEMV, int8/int4 matmuls) in %.0f s (once)", time.time() - t)
        return mod
    except Exception as e:  # no compiler, headers, ...: plain torch it is
        log.warning("C++ CPU kernels unavailable (%s); using torch's kernels", str(e).splitlines()[0][:200])
        return None


def pack_int4_blocks(q: torch.Tensor) -> torch.Tensor:
    """[N, K] int4 values 0..15 (K % 32 == 0) -> [N, K/2] uint8 in `int4_linear`'s layout: per block of 32
    weights, byte j holds weight j (low nibble) and weight j + 16 (high nibble)."""
    N, K = q.shape
    if K % 32:
        raise ValueError(f"int4 block packing needs K % 32 == 0, got {K}")
    b = q.to(torch.uint8).reshape(N, K // 32, 2, 16)
    return (b[:, :, 0] | (b[:, :, 1] << 4)).reshape(N, K // 2).contiguous()


def unpack_int4_blocks(p: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_int4_blocks`: [N, K/2] uint8 -> [N, K] values 0..15."""
    N, half = p.shape
    b = p.reshape(N, half // 16, 1, 16)
    return torch.cat((b & 0x0F, b >> 4), dim=2).reshape(N, half * 2)
