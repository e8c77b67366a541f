"""The serving context every route reads: config, model, backend (tokenizer, HF config, engine), metrics.

    from mindie_like.server.context import get_context
    ctx = get_context(request)        # or get_context(app)
    ctx.model_name, ctx.backend.tokenizer, ctx.engine, ctx.metrics, ctx.model_options, ctx.config
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from aiohttp import web

from ..config.loader import LoadedConfig
from ..config.schema import MindIEConfig, ModelTypeOptions
from ..engine.types import Engine, EngineConfig, EngineStats
from .metrics import Metrics


@dataclass
class Backend:
    """What the daemon loaded for the model. `engine` is None until the engine is plugged in (daemon.build_engine);
    routes that generate must answer 503 while it is None and never fake output."""
    tokenizer: Any
    hf_config: Any
    model_type: str
    model_path: Path
    gguf_file: Optional[str] = None
    tokenizer_dir: Optional[str] = None   # the folder the tokenizer and generation_config.json were read from
    engine: Optional[Engine] = None


@dataclass
class ServingContext:
    loaded: LoadedConfig
    backend: Backend
    engine_config: EngineConfig
    metrics: Metrics
    started_at: float = field(default_factory=time.time)
    stopping: bool = False
    inflight: int = 0                                # requests being handled now, all planes
    extra: dict = field(default_factory=dict)      # free room for later modules (e.g. a chat renderer cache)

    @property
    def config(self) -> MindIEConfig:
        return self.loaded.config

    @property
    def model_name(self) -> str:
        return self.loaded.config.model.modelName

    @property
    def engine(self) -> Optional[Engine]:
        return self.backend.engine

    @property
    def model_options(self) -> ModelTypeOptions:
        """The config's `models.<model_type>` block for the loaded weights (DeepSeek keys aliased)."""
        return self.loaded.config.model.options_for(self.backend.model_type)

    @property
    def chat_template_path(self) -> Optional[Path]:
        """The configured `models.<model_type>.chat_template` file, resolved against the home dir (None: use the
        tokenizer's template). Its existence was checked at start."""
        t = self.model_options.chat_template
        return self.loaded.resolve(t, "chat_template") if t else None

    @property
    def ready(self) -> bool:
        return not self.stopping

    def engine_stats(self) -> EngineStats:
        eng = self.backend.engine
        if eng is None:
            return EngineStats(block_size=self.engine_config.block_size)
        return eng.stats()


CTX_KEY = web.AppKey("mindie_like_ctx", ServingContext)


def get_context(obj: Union[web.Request, web.Application]) -> ServingContext:
    app = obj.app if isinstance(obj, web.Request) else obj
    return app[CTX_KEY]
