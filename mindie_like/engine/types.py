"""The engine's public data types: what the server hands in and what streams back out.

These are the contract between the HTTP side (server/, built on the config) and the engine (engine/,
backend_atb/). The server never touches tensors; the engine never touches HTTP.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Optional, Protocol, runtime_checkable

if TYPE_CHECKING:       # the server side imports this module and stays free of torch
    import torch


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


@dataclass
class ForwardBatch:
    """One forward step, as the scheduler hands it to the model runner.

    Built on the CPU (rank 0 broadcasts it unchanged to tensor-parallel workers); the runner moves the tensors to
    its device. Sequences are laid out one after another in `input_ids`."""
    seq_ids: list[str]            # [B] request ids, for runners that keep per-sequence state (generic HF path)
    input_ids: torch.Tensor       # [T] int64, the new tokens of all sequences, flattened in order
    positions: torch.Tensor       # [T] int64, absolute position of each new token
    query_lens: list[int]         # [B] new tokens per sequence (1 for a decode, >1 for a (chunk of) prefill)
    context_lens: list[int]       # [B] tokens in the KV cache for the sequence after this step (cached + new)
    block_tables: torch.Tensor    # [B, max_blocks] int32, physical block ids, padded with 0
    slot_mapping: torch.Tensor    # [T] int64, KV slot (block_id * block_size + offset) of each new token
    logits_indices: torch.Tensor  # [S] int64, rows of the flattened tokens whose logits are returned

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)

    @property
    def is_decode_only(self) -> bool:
        return all(q == 1 for q in self.query_lens)


class Runner(Protocol):
    """What the engine needs of a model runner (backend_atb's runners; the test fakes)."""
    vocab_size: int
    eos_token_ids: list[int]
    max_model_len: int
    block_size: int
    supports_prefix_cache: bool
    tokenizer_path: str
    num_blocks: int

    def determine_num_blocks(self, kv_cache_gb: float) -> int: ...

    def allocate_kv_cache(self, num_blocks: int) -> None: ...

    def execute(self, batch: ForwardBatch) -> torch.Tensor:
        """float32 logits on the CPU, one row per entry of `batch.logits_indices`, in that order."""

    def release(self, seq_id: str) -> None: ...

    def close(self) -> None: ...
