"""The own path: an architecture from `models/` over the paged KV cache and the op table."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch

from ..engine.types import EngineConfig, ForwardBatch
from . import gguf_native
from .device import cpu_has_fast_bf16
from .layers import ParallelSpec
from .models import build_model
from .ops import get_ops
from .quant import checkpoint as quant_checkpoint
from .quant import fp8_block
from .quant.load_time import load_time_quantizer
from .runner_base import BaseRunner
from .weights import LoadStats, iter_safetensors

log = logging.getLogger(__name__)


class PagedModelRunner(BaseRunner):
    path = "own"
    supports_prefix_cache = True
    supports_kv_copy = True

    def __init__(self, cfg, model_dir: Path, device, dtype, config: EngineConfig,
                 parallel: Optional[ParallelSpec] = None, gguf: Optional[Path] = None):
        """`gguf`: the weights are built from that file's blocks (gguf_native; `model_dir` holds only the config
        and tokenizer), else read from the safetensors in `model_dir`."""
        self._init_common(cfg, model_dir, device, dtype, config)
        self.gguf = gguf            # the file the weights were built from (None: a safetensors folder)
        self.ops = get_ops(device, dtype)
        act = dtype
        if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16) and not cpu_has_fast_bf16():
            act = torch.float32     # bf16 weights, float32 math where bf16 arithmetic is emulated
        self.load_stats = LoadStats()
        prequantized = None
        # w8a16 / w4a16 on safetensors: each linear quantized as its last part loads, never the whole float model
        self.load_quant = None if gguf is not None else load_time_quantizer(config, model_dir, dtype, device)
        with torch.inference_mode():
            if gguf is not None:
                self.model = gguf_native.build_model(cfg, dtype, device, self.ops, parallel, act, gguf)
            else:
                prequantized = self._load_folder(cfg, model_dir, dtype, device, parallel, act)
        if self.load_quant is not None:
            log.info("%s", self.load_quant.describe())
        from .quant.model import maybe_quantize  # weight-only quantization hook (quant/, issue 9)
        self.quant_policy = maybe_quantize(self.model, config,
                                           prequantized=prequantized.ckq.scheme if prequantized else None)
        if gguf is not None:
            gguf_native.check_built(self.model)
        if self.ops.name == "npu":
            self.ops.prepare_weights(self.model)     # FRACTAL_NZ where the SoC's matmul wants it (300I Duo)
        self.act_dtype = self.model.act_dtype
        self.kv_dtype = self.model.kv_dtype
        self.vocab_size = self.model.vocab_size
        self.kv_caches: list = []
        self.num_blocks = 0
        self._windows = set(self.model.windows)

    def _load_folder(self, cfg, model_dir: Path, dtype, device, parallel, act):
        """Builds the model from the safetensors in `model_dir`; returns the pre-quantized loader, if any."""
        self.model = build_model(cfg, dtype, device, self.ops, parallel, act_dtype=act, load_quant=self.load_quant)
        # a tensor-parallel rank reads only its shard of each tensor
        wanted, slicer, fp8 = self.model.wants_weight, self.model.weight_slice, None
        fp8_block_size = fp8_block.detect(model_dir)
        if fp8_block_size is not None:      # FP8 tiles dequantized to the model's dtype as they stream in
            fp8 = fp8_block.Fp8BlockStream(fp8_block_size, dtype, wanted, slicer)
            wanted, slicer = fp8.wanted, fp8.slicer
        tensors = iter_safetensors(model_dir, wanted=wanted, slicer=slicer, stats=self.load_stats)
        if fp8 is not None:
            tensors = fp8.take(tensors)
        prequantized = quant_checkpoint.prequantized_loader(model_dir, self.model)
        self.model.load_weights(prequantized.take(tensors) if prequantized else tensors, presliced=True)
        if prequantized:
            prequantized.finish()
        return prequantized

    def kv_cache_bytes_per_block(self) -> int:
        return self.model.kv_bytes_per_block(self.block_size)

    def allocate_kv_cache(self, num_blocks: int) -> None:
        self.kv_caches = []
        self.kv_caches = self.model.allocate_kv(num_blocks, self.block_size)
        self.num_blocks = num_blocks

    def weight_bytes(self) -> int:
        return self.model.weight_bytes()

    def _copy_kv(self, copies) -> None:
        """Partial-block prefix reuse: the first n slots of block src into block dst, in every layer's caches
        (each cache tensor is [num_blocks, block_size, ...]: K and V, or MLA's latent and rope key)."""
        for src, dst, n in copies:
            for caches in self.kv_caches:
                for t in caches:
                    t[dst, :n].copy_(t[src, :n])

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
        if batch.kv_copies:
            self._copy_kv(batch.kv_copies)
        self.model.ensure_positions(max(batch.context_lens))
        meta = self.ops.prepare(query_lens=batch.query_lens, context_lens=batch.context_lens,
                                block_tables=block_tables, slot_mapping=slot_mapping, block_size=self.block_size,
                                scale=self.model.scale, windows=self._windows)
        logits = self.model.forward(input_ids, positions, meta, self.kv_caches, logits_indices)
        return logits if cpu or logits is None else logits.cpu()


