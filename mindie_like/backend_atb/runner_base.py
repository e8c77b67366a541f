"""The surface every model runner shares (engine.types.Runner), and what the runners compute alike: EOS ids, the
model length, the KV-cache block budget."""
from __future__ import annotations

from pathlib import Path

import torch

from ..engine.types import EngineConfig, ForwardBatch
from .device import free_memory_bytes

CPU_KV_FRACTION = 0.25      # kv_cache_gb = -1 on CPU: this share of MemAvailable
DEVICE_KV_FRACTION = 0.85   # kv_cache_gb = -1 on NPU/CUDA: this share of the free device memory after weights


def _eos_ids(cfg, model_dir: Path) -> list[int]:
    ids: list[int] = []

    def add(x):
        if x is None:
            return
        for i in (x if isinstance(x, (list, tuple)) else [x]):
            if isinstance(i, int) and i not in ids:
                ids.append(i)
    add(getattr(cfg, "eos_token_id", None))
    try:
        from transformers import GenerationConfig
        add(GenerationConfig.from_pretrained(str(model_dir)).eos_token_id)
    except Exception:
        pass
    return ids


def _max_model_len(cfg) -> int:
    for key in ("max_position_embeddings", "seq_length", "n_positions", "max_sequence_length"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return 2048


class BaseRunner:
    """What every runner shares (engine.types.Runner); `runner.ModelRunner.load(config)` picks one."""
    hf_config: object
    model_type: str
    vocab_size: int
    eos_token_ids: list[int]
    max_model_len: int
    device: torch.device
    dtype: torch.dtype
    block_size: int
    supports_prefix_cache: bool
    tokenizer_path: str
    num_blocks: int = 0
    path: str = ""              # "own" or "generic"

    def _init_common(self, cfg, model_dir: Path, device, dtype, config: EngineConfig):
        self.hf_config = cfg
        self.model_dir = model_dir
        self.model_type = cfg.model_type
        self.vocab_size = int(getattr(cfg, "vocab_size", 0) or getattr(cfg, "padded_vocab_size", 0))
        self.eos_token_ids = _eos_ids(cfg, model_dir)
        self.max_model_len = _max_model_len(cfg)
        self.device, self.dtype = device, dtype
        self.block_size = int(config.block_size)
        self.tokenizer_path = str(model_dir)

    # ---- KV sizing (shared) --------------------------------------------------------------------------------
    def kv_cache_bytes_per_block(self) -> int:
        raise NotImplementedError

    def determine_num_blocks(self, kv_cache_gb: float) -> int:
        """Blocks that fit in `kv_cache_gb` GiB (-1: a share of free device memory, of available RAM on CPU)."""
        if kv_cache_gb is not None and kv_cache_gb > 0:
            budget = int(kv_cache_gb * (1 << 30))
        else:
            frac = CPU_KV_FRACTION if self.device.type == "cpu" else DEVICE_KV_FRACTION
            budget = int(free_memory_bytes(self.device) * frac)
        return max(1, budget // self.kv_cache_bytes_per_block())

    def allocate_kv_cache(self, num_blocks: int) -> None:
        raise NotImplementedError

    def execute(self, batch: ForwardBatch) -> torch.Tensor:
        raise NotImplementedError

    def release(self, seq_id: str) -> None:
        pass

    def close(self) -> None:
        """Frees what the runner holds outside this process (the tensor-parallel worker ranks)."""


