"""Device, dtype and thread choice for the backend: decided once, at load.

"npu" when `import torch_npu` works and a device is present, then "cuda", then "cpu". Nothing here (or anywhere in
backend_atb) calls `.cuda()`; tensors move with `.to(device)`.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Optional

import torch

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def torch_npu_module():
    """The torch_npu module when it imports (needs CANN), else None."""
    try:
        import torch_npu  # noqa: F401
        return torch_npu
    except Exception:  # ImportError, or CANN libraries missing (OSError / RuntimeError)
        return None


def npu_available() -> bool:
    if torch_npu_module() is None:
        return False
    try:
        return bool(torch.npu.is_available()) and torch.npu.device_count() > 0  # type: ignore[attr-defined]
    except Exception:
        return False


def select_device(preference: str = "auto", index: int = 0) -> torch.device:
    """`preference`: "auto", "npu", "cuda", "cpu" (optionally with ":N"). "auto" picks npu, then cuda, then cpu."""
    pref = (preference or "auto").lower()
    if pref != "auto":
        if ":" in pref:
            return torch.device(pref)
        if pref == "npu":
            if not npu_available():
                raise RuntimeError("device 'npu' requested but torch_npu or an NPU is not available")
        elif pref == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("device 'cuda' requested but CUDA is not available")
        elif pref != "cpu":
            raise ValueError(f"unknown device {preference!r} (auto, npu, cuda, cpu)")
        return torch.device(pref, index) if pref != "cpu" else torch.device("cpu")
    if npu_available():
        return torch.device("npu", index)
    if torch.cuda.is_available():
        return torch.device("cuda", index)
    return torch.device("cpu")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16: bf16 compute is native. Overridable with MINDIE_LIKE_CPU_BF16=0/1."""
    env = os.environ.get("MINDIE_LIKE_CPU_BF16")
    if env is not None:
        return env not in ("0", "false", "False", "")
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def parse_dtype(name) -> Optional[torch.dtype]:
    if name is None:
        return None
    if isinstance(name, torch.dtype):
        return name
    name = str(name).replace("torch.", "")
    return _DTYPES.get(name)


def choose_dtype(requested: str, config_dtype, device: torch.device) -> torch.dtype:
    """EngineConfig.dtype wins unless "auto". Else the weights' dtype, except on CPU: half-precision weights run as
    bfloat16 where the CPU has AVX512-BF16/AMX and as float32 otherwise; float16 never runs on CPU."""
    if requested and requested != "auto":
        dt = parse_dtype(requested)
        if dt is None:
            raise ValueError(f"unknown dtype {requested!r} (auto, float32, bfloat16, float16)")
        if device.type == "cpu" and dt == torch.float16:
            log.warning("float16 on CPU is slow and imprecise; using bfloat16")
            dt = torch.bfloat16
        return dt
    dt = parse_dtype(config_dtype) or torch.float32
    if device.type == "cpu":
        if dt in (torch.float16, torch.bfloat16):
            return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
        return torch.float32
    return dt


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def configure_threads(num_threads: int = 0) -> int:
    n = num_threads if num_threads and num_threads > 0 else available_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def free_memory_bytes(device: torch.device) -> int:
    """Free memory of the device (RAM available on CPU)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "npu":
        free, _ = torch.npu.mem_get_info(device)  # type: ignore[attr-defined]
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30
