"""mindie_like.engine: requests, KV block manager (prefix caching), continuous-batching scheduler, sampler, and the
AsyncEngine the server talks to (see types.py for the contract)."""
from .types import (Engine, EngineConfig, EngineError, EngineOverloaded, EngineStats, LogitsMask, PromptLimits,
                    PromptRefused, RequestOutput, SamplingParams, TokenLogprob)

__all__ = ["AsyncEngine", "EngineCore", "Engine", "EngineConfig", "EngineError", "EngineOverloaded", "EngineStats",
           "LogitsMask", "PromptLimits", "PromptRefused", "RequestOutput", "SamplingParams", "TokenLogprob"]


def __getattr__(name):  # lazy: importing the types must not pull torch
    if name == "AsyncEngine":
        from .async_engine import AsyncEngine
        return AsyncEngine
    if name == "EngineCore":
        from .core import EngineCore
        return EngineCore
    raise AttributeError(name)
