"""The engine's public data types: what the server hands in and what streams back out.

These are the contract between the HTTP side (server/, built on the config) and the engine (engine/,
backend_atb/). The server never touches tensors; the engine never touches HTTP.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional, Protocol, runtime_checkable


@runtime_checkable
class LogitsMask(Protocol):
    """Per-request constrained decoding hook (a grammar matcher behind it).

    The engine calls `apply` on the request's logits row before sampling and `accept` with the sampled token.
    After a preemption the request is recomputed from its tokens; the matcher state stays valid because the
    accepted tokens are kept, so nothing is replayed twice.
    """

    def apply(self, logits: Any) -> None:
        """Set disallowed tokens of a 1-D float logits tensor (vocab,) to -inf, in place."""

    def accept(self, token_id: int) -> bool:
        """Advance the matcher by one sampled token; False if the token was not allowed."""

    def is_finished(self) -> bool:
        """True once the grammar has reached an end state: the engine stops the request (finish 'stop')."""


@dataclass
class SamplingParams:
    max_tokens: Optional[int] = None          # None: the engine's cap (maxIterTimes and what fits in maxSeqLen)
    min_tokens: int = 0
    temperature: float = 1.0                  # 0 = greedy
    top_k: int = -1                           # -1 = off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: Optional[int] = None                # a request's random stream depends only on its seed
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    keep_special_tokens: frozenset[str] = frozenset()  # kept in text even when skipping specials (tool markers)
    logprobs: Optional[int] = None            # None: no logprobs; k >= 0: sampled token's logprob + top-k
    logits_mask: Optional[LogitsMask] = None  # constrained decoding


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (token_id, logprob), best first


@dataclass
class RequestOutput:
    """One step's output for one request, streamed by `AsyncEngine.generate`."""
    request_id: str
    new_token_ids: list[int]
    text_delta: str
    finished: bool = False
    finish_reason: Optional[str] = None       # "stop" | "length" | "abort" | "error"
    stop_reason: Any = None                   # the stop string or token id that ended it
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0                # prompt tokens served from the prefix cache
    num_output_tokens: int = 0                # generated so far, including this step
    logprobs: Optional[list[TokenLogprob]] = None  # one per new token when asked for
    prefill_time_ms: Optional[float] = None   # set on the first output
    decode_time_ms: Optional[float] = None    # this decode step's time
    error: Optional[str] = None               # set with finish_reason "error"
    backend_failed: bool = False              # the forward step raised (a kernel error, a dead TP rank): HTTP 500


@dataclass
class EngineStats:
    running: int = 0
    waiting: int = 0
    swapped: int = 0
    total_blocks: int = 0
    free_blocks: int = 0                      # blocks no live request holds (cached-but-unreferenced count as free)
    total_cpu_blocks: int = 0
    free_cpu_blocks: int = 0
    block_size: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    cached_tokens_total: int = 0
    requests_finished_total: int = 0


@dataclass
class EngineConfig:
    """What the engine needs, mapped from the daemon config (ModelDeployConfig/ModelConfig/ScheduleConfig)."""
    model_path: str
    model_name: str = "model"
    dtype: str = "auto"                       # "auto" (from the weights' config), "float32", "bfloat16", "float16"
    device: str = "auto"                      # "auto" picks npu, then cuda, then cpu
    trust_remote_code: bool = False
    world_size: int = 1
    device_ids: list[int] = field(default_factory=lambda: [0])
    block_size: int = 128                     # ScheduleConfig.cacheBlockSize
    kv_cache_gb: float = -1                   # ModelConfig.npuMemSize; -1 = a fraction of free device memory
    swap_gb: float = 5                        # ModelConfig.cpuMemSize
    max_seq_len: int = 2560
    max_input_len: int = 2048
    truncation: int = 0                       # 0 reject, -1 keep the tail, 1 keep the head
    max_batch_size: int = 200
    max_prefill_batch_size: int = 50
    max_prefill_tokens: int = 8192
    max_iter_times: int = 512
    chunked_prefill: bool = False             # templateType "Mix"
    enable_prefix_cache: bool = True
    max_queue_size: int = 0                   # 0 = unbounded waiting queue
    num_threads: int = 0                      # 0 = the cores actually available
    extra: dict[str, Any] = field(default_factory=dict)


class EngineError(Exception):
    """The engine refused a request (maps to HTTP 424 Generation Error)."""


class BackendFailure(RuntimeError):
    """The model backend can no longer run (a tensor-parallel rank died or hung); raised by the runner."""


class EngineOverloaded(EngineError):
    """The waiting queue is full (maps to HTTP 503)."""


class Engine(Protocol):
    """What the server uses. Implemented by engine.AsyncEngine."""

    def generate(self, prompt_token_ids: list[int], sampling_params: SamplingParams,
                 request_id: str) -> AsyncIterator[RequestOutput]: ...

    async def abort(self, request_id: str) -> None: ...

    def stats(self) -> EngineStats: ...
