"""The serving context every route reads: config, model, backend (tokenizer, HF config, engine), the serving
objects built once for the loaded model, metrics. `mindie_like.assembly.build_context` makes it.

    from mindie_like.server.context import get_context
    ctx = get_context(request)        # or get_context(app)
    ctx.model_name, ctx.backend.tokenizer, ctx.engine, ctx.servings.chat, ctx.metrics, ctx.model_options, ctx.config
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from aiohttp import web

from ..config.loader import LoadedConfig
from ..config.schema import MindIEConfig, ModelTypeOptions
from ..engine.types import Engine, EngineConfig, EngineStats
from .metrics import Metrics

if TYPE_CHECKING:
    from ..serving import ChatServing, CompletionServing
    from ..serving.anthropic import MessagesServing
    from ..serving.responses import ResponsesServing
    from .compat import CompatServings


@dataclass
class Backend:
    """What the daemon loaded for the model (mindie_like.assembly.build_backend). With `engine` None (tests of the
    planes without a model) the routes that generate answer 503 and never fake output."""
    tokenizer: Any
    hf_config: Any
    model_type: str
    model_path: Path
    tokenizer_dir: Optional[str] = None   # the folder the tokenizer and generation_config.json were read from
    engine: Optional[Engine] = None


@dataclass
class Servings:
    """The serving objects of the loaded model, built once (mindie_like.assembly.build_servings) and shared by
    every listener: the OpenAI routes use `chat` / `completion`, the compat routes `compat` (built with the chat
    serving's options, so limits, timeouts and sampling defaults are the same on every route), /v1/responses
    `responses` (with its store) and /v1/messages `messages` (with its thinking-signature key), both over `chat`."""
    chat: "ChatServing"
    completion: "CompletionServing"
    compat: "CompatServings"
    responses: Optional["ResponsesServing"] = None
    messages: Optional["MessagesServing"] = None


@dataclass
class ServingContext:
    loaded: LoadedConfig
    backend: Backend
    engine_config: EngineConfig
    metrics: Metrics
    servings: Optional[Servings] = None            # None without an engine: the generating routes answer 503
    started_at: float = field(default_factory=time.time)
    stopping: bool = False
    inflight: int = 0                                # requests being handled now, all planes

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
