"""The one mapping from the daemon config to the engine's EngineConfig."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..engine.types import EngineConfig
from .loader import LoadedConfig


def gguf_file_in(folder: Path) -> Optional[str]:
    """The name of the single .gguf file a weights folder holds (None when it holds config.json or no gguf)."""
    if not folder.is_dir() or (folder / "config.json").is_file():
        return None
    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    return ggufs[0] if len(ggufs) == 1 else None


def to_engine_config(loaded: LoadedConfig) -> EngineConfig:
    cfg = loaded.config
    m, d, s = cfg.model, cfg.deploy, cfg.schedule
    model_path = loaded.model_path
    extra = dict(m.model_extra or {})
    extra["plugin_params"] = m.plugin_params
    gguf = gguf_file_in(model_path)
    if gguf:
        extra["gguf_file"] = gguf
    extra.update(
        backend_type=m.backendType,
        max_preempt_count=s.maxPreemptCount,
        max_queue_delay_us=s.maxQueueDelayMicroseconds,
        max_first_token_wait_ms=s.maxFirstTokenWaitTime,
        token_timeout_s=cfg.ServerConfig.tokenTimeout,
        e2e_timeout_s=cfg.ServerConfig.e2eTimeout,
        multi_nodes=cfg.BackendConfig.multiNodesInferEnabled,
        multi_nodes_port=cfg.BackendConfig.multiNodesInferPort,
        tp_collective_timeout=float(m.tpCollectiveTimeout),
        tp_heartbeat_timeout=float(m.tpHeartbeatTimeout),
    )
    for key in ("moe_ep", "moe_tp"):
        if getattr(m, key) is not None:
            extra[key] = getattr(m, key)
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
        extra=extra,
    )
