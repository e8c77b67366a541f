"""The one mapping from the daemon config to the engine's EngineConfig."""
from __future__ import annotations

from ..engine.types import EngineConfig, QuantOptions
from ..paths import cache_dir
from .loader import LoadedConfig


def to_engine_config(loaded: LoadedConfig) -> EngineConfig:
    cfg = loaded.config
    m, d, s = cfg.model, cfg.deploy, cfg.schedule
    model_path = loaded.model_path
    prefix = s.enablePrefixCache is not False
    if isinstance(m.plugin_params, dict) and m.plugin_params.get("plugin_type") == "prefix_cache":
        prefix = True
    return EngineConfig(
        model_path=str(model_path),
        model_name=m.modelName,
        dtype=m.dtype,
        device=m.device,
        trust_remote_code=m.trustRemoteCode,
        world_size=m.worldSize,
        device_ids=list(cfg.BackendConfig.npuDeviceIds[0]),
        block_size=s.cacheBlockSize,
        kv_cache_gb=float(m.npuMemSize),
        swap_gb=float(m.cpuMemSize),
        max_seq_len=d.maxSeqLen,
        max_input_len=d.maxInputTokenLen,
        truncation=d.truncation,
        max_batch_size=s.maxBatchSize,
        max_prefill_batch_size=s.maxPrefillBatchSize,
        max_prefill_tokens=s.maxPrefillTokens,
        max_iter_times=s.maxIterTimes,
        chunked_prefill=s.templateType == "Mix",
        enable_prefix_cache=prefix,
        max_queue_size=s.maxQueueSize,
        num_threads=m.numThreads,
        cache_dir=str(cache_dir()),
        quant=QuantOptions(scheme=m.quantization, group_size=m.quant_group_size, dense=m.quant_dense,
                           crossover=m.quant_crossover, from_gguf=m.quant_from_gguf,
                           dense_dtype=m.quant_dense_dtype, act_bits=m.quant_act_bits),
        multi_nodes=cfg.BackendConfig.multiNodesInferEnabled,
        multi_nodes_port=cfg.BackendConfig.multiNodesInferPort,
        tp_collective_timeout=float(m.tpCollectiveTimeout),
        tp_heartbeat_timeout=float(m.tpHeartbeatTimeout),
        force_generic=m.force_generic,
        num_kv_blocks=m.num_kv_blocks,
        moe_ep=m.moe_ep,
        moe_tp=m.moe_tp,
    )
