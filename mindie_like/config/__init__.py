"""mindie_like.config: the MindIE config file (pydantic models), loading, path resolution, env overrides.

    from mindie_like.config import load_config, ConfigError, to_engine_config
    loaded = load_config(cli_path)          # LoadedConfig(config, path, home); ConfigError(lines) when invalid
    engine_cfg = to_engine_config(loaded)   # mindie_like.engine.types.EngineConfig
    opts = loaded.config.model.options_for(model_type)   # models.<model_type> block (DeepSeek keys aliased)
"""
from .engine_map import to_engine_config
from .loader import (ConfigError, LoadedConfig, effective_config, find_config_path, home_dir, load_config,
                     resolve_path, validate_config)
from .schema import (BackendSection, LogSection, MindIEConfig, ModelDeploySection, ModelEntry, ModelTypeOptions,
                     ScheduleSection, ServerSection, ToolCallOptions, normalize_model_type)

__all__ = [
    "BackendSection", "ConfigError", "LoadedConfig", "LogSection", "MindIEConfig", "ModelEntry",
    "ModelDeploySection", "ModelTypeOptions", "ScheduleSection", "ServerSection", "ToolCallOptions",
    "effective_config", "find_config_path", "home_dir", "load_config", "normalize_model_type",
    "resolve_path", "to_engine_config", "validate_config",
]
