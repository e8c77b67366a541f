"""ModelRunner: loads a model and runs one scheduled ForwardBatch per call.

`ModelRunner.load(config)` picks the path and logs it:
  * own model code (`model.LlamaFamilyModel`, paged KV cache, op table) for llama / mistral / qwen2 / qwen3;
  * the generic path (`HFModelRunner`) for any other model_type transformers can load (qwen3_moe, glm4,
    deepseek_v3, chatglm with trust_remote_code): the HF model class with a per-sequence cache, slower but correct;
  * with worldSize > 1, `tp_runner.TPModelRunner`: this process is rank 0 of a tensor-parallel group whose other
    ranks are worker processes (own model code only).

`execute(batch)` returns float32 logits on the CPU, one row per entry of `batch.logits_indices`, in that order.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import torch

from ..engine.types import EngineConfig
from .batch import ForwardBatch
from .device import choose_dtype, configure_threads, cpu_has_fast_bf16, free_memory_bytes, select_device
from .model import LlamaFamilyModel, ParallelSpec, own_path_supports
from .ops import get_ops
from .quant import checkpoint as quant_checkpoint
from .weights import LoadStats, iter_safetensors, resolve_model_dir

log = logging.getLogger(__name__)

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


class ModelRunner:
    """Common surface of both paths. Use `ModelRunner.load(config)`."""
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

    @classmethod
    def load(cls, config: EngineConfig, parallel: Optional[ParallelSpec] = None, device_index: Optional[int] = None,
             threads: Optional[int] = None) -> "ModelRunner":
        """The runner for `config`. worldSize > 1 (without `parallel`): a TPModelRunner that starts the worker
        ranks. `parallel`, `device_index`, `threads`: this rank's share, device and CPU threads (tp_runner)."""
        from transformers import AutoConfig
        from .parallel import total_world_size
        if parallel is None and total_world_size(config) > 1:
            prequantized = quant_checkpoint.detect(config.model_path)
            if prequantized is not None:
                quant_checkpoint.check_serving(prequantized, config, world_size=total_world_size(config),
                                               own_path=True)
            from .tp_runner import TPModelRunner
            return TPModelRunner.launch(config)
        t0 = time.time()
        device = select_device(config.device, (config.device_ids or [0])[0] if device_index is None else device_index)
        if device.type == "cpu":
            threads = configure_threads(threads or config.num_threads)
        model_dir = resolve_model_dir(config.model_path, config.trust_remote_code, config.cache_dir)
        cfg = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=config.trust_remote_code)
        cfg_dtype = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
        dtype = choose_dtype(config.dtype, cfg_dtype, device)
        ok, why = own_path_supports(cfg)
        force_generic = config.force_generic
        prequantized = quant_checkpoint.detect(model_dir)       # GPTQ / AWQ / msmodelslim: refused or loaded as is
        if prequantized is not None:
            quant_checkpoint.check_serving(prequantized, config, world_size=parallel.size if parallel else 1,
                                           own_path=ok and not force_generic, why_not_own=why or "forced generic")
        if ok and not force_generic:
            runner: ModelRunner = PagedModelRunner(cfg, model_dir, device, dtype, config, parallel)
            path = "own llama-family model code (paged KV, op table %s)" % runner.ops.name
        else:
            runner = HFModelRunner(cfg, model_dir, device, dtype, config)
            path = "generic transformers path (%s)" % ("forced" if force_generic else why)
        rank = f" rank {parallel.rank}/{parallel.size}," if parallel is not None and parallel.size > 1 else ""
        log.info("model %s (model_type %s)%s on %s, %s, threads %s: %s; loaded in %.1f s", config.model_path,
                 cfg.model_type, rank, device, str(dtype).replace("torch.", ""), threads, path, time.time() - t0)
        return runner

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


class PagedModelRunner(ModelRunner):
    path = "own"
    supports_prefix_cache = True

    def __init__(self, cfg, model_dir: Path, device, dtype, config: EngineConfig,
                 parallel: Optional[ParallelSpec] = None):
        self._init_common(cfg, model_dir, device, dtype, config)
        self.ops = get_ops(device, dtype)
        act = dtype
        if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16) and not cpu_has_fast_bf16():
            act = torch.float32     # bf16 weights, float32 math where bf16 arithmetic is emulated
        self.load_stats = LoadStats()
        with torch.inference_mode():
            self.model = LlamaFamilyModel(cfg, dtype, device, self.ops, parallel, act_dtype=act)
            # a tensor-parallel rank reads only its shard of each tensor
            tensors = iter_safetensors(model_dir, wanted=self.model.wants_weight, slicer=self.model.weight_slice,
                                       stats=self.load_stats)
            prequantized = quant_checkpoint.prequantized_loader(model_dir, self.model)
            self.model.load_weights(prequantized.take(tensors) if prequantized else tensors, presliced=True)
            if prequantized:
                prequantized.finish()
        from .quant.model import maybe_quantize  # weight-only quantization hook (quant/)
        self.quant_policy = maybe_quantize(self.model, config,
                                           prequantized=prequantized.ckq.scheme if prequantized else None)
        if self.ops.name == "npu":
            self.ops.prepare_weights(self.model)     # FRACTAL_NZ where the SoC's matmul wants it (300I Duo)
        self.act_dtype = self.model.act_dtype
        self.kv_dtype = self.model.kv_dtype
        self.vocab_size = self.model.vocab_size
        self.kv_caches: list = []
        self.num_blocks = 0
        self._windows = set(self.model.windows)

    def kv_cache_bytes_per_block(self) -> int:
        return self.model.kv_bytes_per_block(self.block_size)

    def allocate_kv_cache(self, num_blocks: int) -> None:
        self.kv_caches = []
        self.kv_caches = self.model.allocate_kv(num_blocks, self.block_size)
        self.num_blocks = num_blocks

    def weight_bytes(self) -> int:
        return self.model.weight_bytes()

    @torch.inference_mode()
    def execute(self, batch: ForwardBatch) -> torch.Tensor:
        if not self.kv_caches:
            raise RuntimeError("allocate_kv_cache() first")
        dev = self.device
        cpu = dev.type == "cpu"
        input_ids = batch.input_ids if cpu else batch.input_ids.to(dev, non_blocking=True)
        positions = batch.positions if cpu else batch.positions.to(dev, non_blocking=True)
        slot_mapping = batch.slot_mapping if cpu else batch.slot_mapping.to(dev, non_blocking=True)
        block_tables = batch.block_tables if cpu else batch.block_tables.to(dev, non_blocking=True)
        logits_indices = batch.logits_indices if cpu else batch.logits_indices.to(dev, non_blocking=True)
        self.model.ensure_positions(max(batch.context_lens))
        meta = self.ops.prepare(query_lens=batch.query_lens, context_lens=batch.context_lens,
                                block_tables=block_tables, slot_mapping=slot_mapping, block_size=self.block_size,
                                scale=self.model.scale, windows=self._windows)
        logits = self.model.forward(input_ids, positions, meta, self.kv_caches, logits_indices)
        return logits if cpu or logits is None else logits.cpu()


class HFModelRunner(ModelRunner):
    """Generic path: the transformers model class, one HF cache per sequence (no paged KV, no prefix cache)."""
    path = "generic"
    supports_prefix_cache = False

    def __init__(self, cfg, model_dir: Path, device, dtype, config: EngineConfig):
        from transformers import AutoModelForCausalLM
        self._init_common(cfg, model_dir, device, dtype, config)
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype,
                                                          trust_remote_code=config.trust_remote_code)
        self.model.to(device).eval()
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0]) or self.vocab_size
        self._states: dict[str, tuple[object, int]] = {}     # seq_id -> (cache, tokens in it)
        self._logits_to_keep = True
        tc = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        heads = getattr(tc, "num_attention_heads", 1) or 1
        self._kv_heads = getattr(tc, "num_key_value_heads", None) or getattr(tc, "multi_query_group_num", None) or heads
        self._head_dim = getattr(tc, "head_dim", None) or getattr(tc, "kv_channels", None) or \
            (tc.hidden_size // heads)
        self._layers = getattr(tc, "num_hidden_layers", None) or getattr(tc, "num_layers", 1)

    def kv_cache_bytes_per_block(self) -> int:
        """An estimate for the engine's accounting; the HF caches hold the real memory."""
        el = torch.tensor([], dtype=self.dtype).element_size()
        return max(1, 2 * self._layers * self.block_size * self._kv_heads * self._head_dim * el)

    def allocate_kv_cache(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks          # nothing to allocate: caches grow per sequence

    def release(self, seq_id: str) -> None:
        self._states.pop(seq_id, None)

    def _cache_for(self, seq_id: str, start: int):
        from transformers import DynamicCache
        st = self._states.get(seq_id)
        if start == 0 or st is None:
            if start != 0:
                raise RuntimeError(f"generic path: sequence {seq_id} continues at {start} without its cache "
                                   "(no prefix cache on this path)")
            cache = DynamicCache(config=self.model.config)
            self._states[seq_id] = (cache, 0)
            return cache
        cache, n = st
        if n > start:
            cache.crop(start)
        elif n < start:
            raise RuntimeError(f"generic path: sequence {seq_id} has {n} cached tokens, step starts at {start}")
        return cache

    @torch.inference_mode()
    def execute(self, batch: ForwardBatch) -> torch.Tensor:
        wanted = batch.logits_indices.tolist()
        out = torch.empty(len(wanted), self.vocab_size, dtype=torch.float32)
        pos_of = {t: r for r, t in enumerate(wanted)}
        s = 0
        for seq_id, ql in zip(batch.seq_ids, batch.query_lens):
            e = s + ql
            rows = [t for t in range(s, e) if t in pos_of]
            start = int(batch.positions[s])
            cache = self._cache_for(seq_id, start)
            ids = batch.input_ids[s:e].to(self.device)[None]
            pos = batch.positions[s:e].to(self.device)[None]
            keep = torch.tensor([t - s for t in rows], dtype=torch.long) if rows else 1
            kwargs = dict(input_ids=ids, position_ids=pos, past_key_values=cache, use_cache=True)
            if self._logits_to_keep:
                try:
                    res = self.model(**kwargs, logits_to_keep=keep)
                except TypeError:           # remote-code models without logits_to_keep
                    self._logits_to_keep = False
                    if hasattr(cache, "crop") and cache.get_seq_length() > start:
                        cache.crop(start)
                    kwargs["past_key_values"] = cache
            if not self._logits_to_keep:
                res = self.model(**kwargs)
            self._states[seq_id] = (res.past_key_values if res.past_key_values is not None else cache, e - s + start)
            if rows:
                lg = res.logits[0].float().cpu()
                if not self._logits_to_keep:
                    lg = lg[[t - s for t in rows]]
                for j, t in enumerate(rows):
                    out[pos_of[t]] = lg[j, : self.vocab_size]
            s = e
        return out
