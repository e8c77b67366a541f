"""The one place the daemon is put together: config → backend (model runner, tokenizer, engine) → serving objects
→ planes.

    loaded = load_config(...)
    backend, engine_config = build_backend(loaded)         # loads the model (slow), starts the engine
    ctx = build_context(loaded, backend, engine_config)    # the serving objects, built once
    server = Server(ctx, ROUTES, ssl_factory(loaded))      # the planes' listeners (mindie_like.server.lifecycle)

In-process tests call `build_context` around a test backend (a scripted engine over a real tokenizer) and
serve it with the same `ROUTES`, so they run what the daemon runs.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from .config import ConfigError, LoadedConfig, to_engine_config
from .engine.types import EngineConfig, PromptLimits
from .server.app import RouteTable
from .server.compat import add_compat_routes, build_compat_servings
from .server.context import Backend, Servings, ServingContext
from .server.metrics import Metrics
from .server.anthropic import add_anthropic_routes
from .server.openai import add_openai_routes
from .server.responses import add_responses_routes
from .server.router_endpoints import add_router_routes, register_router_gauges
from .server.routes import add_management_routes, add_metrics_routes, add_model_routes

log = logging.getLogger("mindie_like.assembly")

# Every route module, by plane. A new route module (say server/responses.py with `add_responses_routes(app,
# ctx)`) is one more entry here; its handlers read the serving objects from `ctx.servings`.
ROUTES: RouteTable = {
    "business": (add_model_routes, add_openai_routes, add_compat_routes, add_responses_routes, add_anthropic_routes,
                 add_router_routes),
    "management": (add_management_routes,),
    "metrics": (add_metrics_routes,),
}


class BackendLoadError(Exception):
    """The model could not be loaded (exit 1; the message names modelWeightPath)."""


def build_backend(loaded: LoadedConfig) -> tuple[Backend, EngineConfig]:
    """Loads the model (a GGUF file is imported once into a safetensors folder under the cache dir), its tokenizer
    and HF config from the loaded folder, and starts the engine on it. Raises ConfigError for what the config
    cannot serve (worldSize vs heads, a refused pre-quantized checkpoint), BackendLoadError for the rest."""
    from transformers import AutoTokenizer

    from .backend_atb import ModelRunner
    from .backend_atb.parallel import TPConfigError
    from .backend_atb.quant.checkpoint import CheckpointRefused
    from .engine import AsyncEngine
    engine_config = to_engine_config(loaded)
    model_path = Path(engine_config.model_path)
    t0 = time.monotonic()
    log.info("loading the model in %s", model_path)
    runner = None
    try:
        runner = ModelRunner.load(engine_config)
        tokenizer = AutoTokenizer.from_pretrained(runner.tokenizer_path,
                                                  trust_remote_code=engine_config.trust_remote_code)
    except TPConfigError as e:       # worldSize vs the model's heads, devices, multi-node environment
        raise ConfigError(str(e)) from e
    except CheckpointRefused as e:   # a pre-quantized checkpoint that cannot be served
        raise ConfigError(f"BackendConfig.ModelDeployConfig.ModelConfig[0].{e.key}: {e}") from e
    except Exception as e:  # transformers and safetensors raise many kinds
        if runner is not None:
            runner.close()
        raise BackendLoadError(f"BackendConfig.ModelDeployConfig.ModelConfig[0].modelWeightPath: {model_path}: "
                               f"cannot load the model ({type(e).__name__}: {e})") from e
    engine = AsyncEngine(engine_config, runner, tokenizer)
    backend = Backend(tokenizer=tokenizer, hf_config=runner.hf_config, model_type=runner.model_type,
                      model_path=model_path, engine=engine, tokenizer_dir=runner.tokenizer_path)
    stats = engine.stats()
    log.info("model %s (model_type %s) ready in %.1fs on %s, %s; KV cache %d blocks of %d tokens",
             loaded.config.model.modelName, runner.model_type, time.monotonic() - t0, runner.device,
             str(runner.dtype).replace("torch.", ""), stats.total_blocks, stats.block_size)
    return backend, engine_config


def build_servings(ctx: ServingContext) -> Servings:
    """The serving objects of the loaded model, from the config's `models.<model_type>` block: the chat template
    (config file, else the tokenizer's), the tool-call processor (config, else the model's default), the grammar
    engine, the limits and timeouts; the completion and compat servings share the chat serving's options."""
    from .serving import ChatServing, CompletionServing
    from .serving.anthropic import MessagesServing
    from .serving.response_store import ResponseStore
    from .serving.responses import ResponsesServing
    cfg, opts, backend = ctx.config, ctx.model_options, ctx.backend
    template = str(ctx.chat_template_path) if ctx.chat_template_path else None
    # the engine's limits include the model's context length and the KV cache; a scripted test engine has none
    limits = getattr(backend.engine, "prompt_limits", None) or PromptLimits(
        max_input_len=cfg.deploy.maxInputTokenLen, max_seq_len=cfg.deploy.maxSeqLen,
        max_iter_times=cfg.schedule.maxIterTimes, truncation=int(cfg.deploy.truncation))
    timeouts = dict(token_timeout_s=float(cfg.ServerConfig.tokenTimeout) or None,
                    e2e_timeout_s=float(cfg.ServerConfig.e2eTimeout) or None)
    chat = ChatServing.from_model(
        backend.engine, backend.tokenizer, ctx.model_name, model_type=backend.model_type,
        hf_config=backend.hf_config, tool_call_parser=opts.tool_call_options.tool_call_parser or None,
        chat_template_path=template, enable_reasoning=opts.enable_reasoning,
        lenient_recovery=opts.tool_call_options.lenient_recovery, strict_tools=opts.tool_call_options.strict,
        model_dir=backend.tokenizer_dir or backend.model_path, metrics=ctx.metrics, limits=limits, **timeouts)
    log.info("tool-call parser: %s; constrained decoding: %s", chat.family,
             "llguidance" if chat.guided is not None else "off")
    completion = CompletionServing(backend.engine, backend.tokenizer, ctx.model_name, options=chat.options,
                                   metrics=ctx.metrics)
    compat = build_compat_servings(backend, ctx.model_name, chat.options, ctx.metrics)
    responses = ResponsesServing(chat, ResponseStore(cfg.ServerConfig.responsesStoreSize), metrics=ctx.metrics)
    return Servings(chat=chat, completion=completion, compat=compat, responses=responses,
                    messages=MessagesServing(chat, metrics=ctx.metrics))


def build_context(loaded: LoadedConfig, backend: Backend, engine_config: EngineConfig) -> ServingContext:
    """The ServingContext the planes serve: the serving objects are built here, once (none without an engine)."""
    ctx = ServingContext(loaded=loaded, backend=backend, engine_config=engine_config,
                         metrics=Metrics(loaded.config.model.modelName))
    register_router_gauges(ctx)          # the queue and KV-cache gauges under the names routers read
    core = getattr(backend.engine, "core", None)
    if core is not None and hasattr(core, "step_observers"):
        core.step_observers.append(ctx.metrics.observe_engine_step)     # engine_step_seconds
    if backend.engine is not None:
        ctx.servings = build_servings(ctx)
    return ctx


def ssl_factory(loaded: LoadedConfig):
    """plane -> the server SSLContext of that plane (mutual TLS); None when httpsEnabled is false."""
    if not loaded.config.ServerConfig.httpsEnabled:
        return None
    from .server.tls import server_ssl_context
    return lambda plane: server_ssl_context(loaded, plane)
