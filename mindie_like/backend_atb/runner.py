"""ModelRunner.load(config): the runner for a config, and the path it takes (logged):
  * own model code (an architecture from `models/`, paged KV cache, op table) when the model_type has one;
  * the generic path (`HFModelRunner`) for any other model_type transformers can load: the HF model class with a
    per-sequence cache, slower but correct;
  * with worldSize > 1, `tp_runner.TPModelRunner`: this process is rank 0 of a tensor-parallel group whose other
    ranks are worker processes (own model code only).

Every runner has the engine.types.Runner surface; `execute(batch)` returns float32 logits on the CPU, one row
per entry of `batch.logits_indices`, in that order.
"""
from __future__ import annotations

from ..engine.types import EngineConfig
from .generic_runner import HFModelRunner
from .local_runner import load_local_runner
from .paged_runner import PagedModelRunner
from .parallel import total_world_size
from .quant import checkpoint as quant_checkpoint
from .runner_base import BaseRunner
from .tp_runner import TPModelRunner


class ModelRunner:
    """The entry point; the runners themselves are BaseRunner subclasses."""

    @staticmethod
    def load(config: EngineConfig) -> BaseRunner:
        if total_world_size(config) > 1:
            prequantized = quant_checkpoint.detect(config.model_path)
            if prequantized is not None:
                quant_checkpoint.check_serving(prequantized, config, world_size=total_world_size(config),
                                               own_path=True)
            return TPModelRunner.launch(config)
        return load_local_runner(config)


__all__ = ["ModelRunner", "BaseRunner", "PagedModelRunner", "HFModelRunner", "TPModelRunner"]
