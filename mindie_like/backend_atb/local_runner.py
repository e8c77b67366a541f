"""One process's runner: the own architecture for the model_type (models/) or the generic transformers path.

Used by `runner.ModelRunner.load` for worldSize 1 and by every tensor-parallel rank (tp_runner) for its shard.
The log line says which path serves the model and why."""
from __future__ import annotations

import logging
import time
from typing import Optional

from ..engine.types import EngineConfig
from .device import choose_dtype, configure_threads, select_device
from .generic_runner import HFModelRunner
from .layers import ParallelSpec
from .models import load_hf_config, model_class, own_path_supports
from .paged_runner import PagedModelRunner
from .quant import checkpoint as quant_checkpoint
from .runner_base import BaseRunner
from .weights import resolve_model_dir

log = logging.getLogger(__name__)


def load_local_runner(config: EngineConfig, parallel: Optional[ParallelSpec] = None,
                      device_index: Optional[int] = None, threads: Optional[int] = None) -> BaseRunner:
    """`parallel`, `device_index`, `threads`: this rank's share, device and CPU threads (tp_runner)."""
    t0 = time.time()
    device = select_device(config.device, (config.device_ids or [0])[0] if device_index is None else device_index)
    if device.type == "cpu":
        threads = configure_threads(threads or config.num_threads)
    model_dir = resolve_model_dir(config.model_path, config.trust_remote_code, config.cache_dir)
    cfg = load_hf_config(model_dir, config.trust_remote_code)
    # transformers reads a config.json's torch_dtype into `dtype`; its torch_dtype property only warns
    cfg_dtype = getattr(cfg, "dtype", None)
    dtype = choose_dtype(config.dtype, cfg_dtype, device)
    ok, why = own_path_supports(cfg)
    force_generic = config.force_generic
    prequantized = quant_checkpoint.detect(model_dir)       # GPTQ / AWQ / msmodelslim: refused or loaded as is
    if prequantized is not None:
        quant_checkpoint.check_serving(prequantized, config, world_size=parallel.size if parallel else 1,
                                       own_path=ok and not force_generic, why_not_own=why or "forced generic")
    if ok and not force_generic:
        runner: BaseRunner = PagedModelRunner(cfg, model_dir, device, dtype, config, parallel)
        path = "own model code %s (models/, paged KV, op table %s)" % (model_class(cfg).__name__, runner.ops.name)
    else:
        runner = HFModelRunner(cfg, model_dir, device, dtype, config)
        path = "generic transformers path (%s)" % ("forced" if force_generic else why)
    rank = f" rank {parallel.rank}/{parallel.size}," if parallel is not None and parallel.size > 1 else ""
    log.info("model %s (model_type %s)%s on %s, %s, threads %s: %s; loaded in %.1f s", config.model_path,
             cfg.model_type, rank, device, str(dtype).replace("torch.", ""), threads, path, time.time() - t0)
    return runner
