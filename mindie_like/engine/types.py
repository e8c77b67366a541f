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


class PromptRefused(ValueError):
    """A prompt the limits refuse (empty, or too long with truncation off); str() is the client's message."""


@dataclass(frozen=True)
class PromptLimits:
    """The one statement of the prompt and output limits: maxInputTokenLen, maxSeqLen (prompt + output),
    maxIterTimes (output), truncation, and what the loaded model adds (its context length folded into
    `max_seq_len`, the KV cache's token capacity). None / 0: no limit. The engine applies it to every request
    and the serving layer applies the engine's (`AsyncEngine.prompt_limits`) before it, so a refusal reaches
    the client as a 422 with the same words either way."""
    max_input_len: Optional[int] = None
    max_seq_len: Optional[int] = None
    max_iter_times: Optional[int] = None
    truncation: int = 0                        # 0 refuse a too-long prompt, -1 keep its tail, 1 keep its head
    kv_capacity: Optional[int] = None          # tokens the whole KV cache holds

    def _input_limit(self) -> tuple[Optional[int], str]:
        candidates = [(self.max_input_len, "maxInputTokenLen")]
        if self.max_seq_len:
            candidates.append((self.max_seq_len - 1, "maxSeqLen"))
        if self.kv_capacity:
            candidates.append((self.kv_capacity - 1, f"the KV cache holds {self.kv_capacity} tokens"))
        limits = [(n, why) for n, why in candidates if n]
        return min(limits, key=lambda x: x[0]) if limits else (None, "")

    def input_limit(self) -> Optional[int]:
        """The most prompt tokens a request may have, or None."""
        return self._input_limit()[0]

    def fit(self, ids: list[int], max_tokens: Optional[int]) -> tuple[list[int], Optional[int]]:
        """(prompt ids truncated as configured, max_tokens capped to what fits; None: uncapped). Raises
        PromptRefused for an empty prompt or a too-long one with truncation off."""
        limit, why = self._input_limit()
        if limit and len(ids) > limit:
            if self.truncation == -1:
                ids = ids[-limit:]
            elif self.truncation == 1:
                ids = ids[:limit]
            else:
                raise PromptRefused(f"prompt: {len(ids)} tokens is more than the limit of {limit} ({why})")
        if not ids:
            raise PromptRefused("prompt: the prompt is empty")
        caps = [c for c in (self.max_seq_len, self.kv_capacity) if c]
        room = [min(caps) - len(ids)] if caps else []
        cap = min(room + ([self.max_iter_times] if self.max_iter_times else []), default=None)
        if cap is not None:
            max_tokens = min(max_tokens, cap) if max_tokens is not None else cap
        return ids, max_tokens


# quantization spellings accepted in ModelConfig.quantization → the scheme ("gguf": each tensor at its own class)
QUANT_SCHEME_ALIASES = {"w8a16": "w8a16", "int8": "w8a16", "w8": "w8a16", "w4a16": "w4a16", "int4": "w4a16",
                        "w4": "w4a16", "gguf": "gguf"}
# ModelConfig.quantization values that keep the weights in float (a GGUF source stays widened)
NO_QUANTIZATION = ("none", "float", "off")


@dataclass
class QuantOptions:
    """Weight-only quantization (ModelConfig.quantization and quant_* keys; docs/quantization.md)."""
    scheme: Optional[str] = None              # None: float weights, or a pre-quantized checkpoint's own format
    group_size: int = 32                      # int4 group size
    dense: str = "auto"                       # "auto" | "never" | "always": dense copies for large batches
    crossover: Optional[float] = None         # rows: a fixed dense/quantized crossover instead of measuring
    from_gguf: bool = True                    # with a .gguf model, build the weights from its own blocks
    dense_dtype: str = "auto"                 # "auto" | "model"
    act_bits: int = 8                         # the own int4 kernel's activation bits (8 or 16)


@dataclass
class EngineConfig:
    """What the engine and the backend read, mapped from the daemon config (config/engine_map.py)."""
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
    partial_block_reuse: bool = True          # reuse a cached prefix to the token (runners with supports_kv_copy)
    max_queue_size: int = 0                   # 0 = unbounded waiting queue
    num_threads: int = 0                      # 0 = the cores actually available
    cache_dir: Optional[str] = None           # where a GGUF model is imported once (None: paths.cache_dir())
    num_kv_blocks: Optional[int] = None       # a fixed KV block count instead of sizing from memory (tests)
    force_generic: bool = False               # the transformers model code even where an own one exists
    quant: QuantOptions = field(default_factory=QuantOptions)
    multi_nodes: bool = False                 # BackendConfig.multiNodesInferEnabled
    multi_nodes_port: int = 1120              # BackendConfig.multiNodesInferPort (MASTER_PORT beats it)
    tp_collective_timeout: float = 120.0      # ModelConfig.tpCollectiveTimeout, seconds
    tp_heartbeat_timeout: float = 10.0        # ModelConfig.tpHeartbeatTimeout, seconds
    moe_ep: Optional[int] = None              # ModelConfig.moe_ep: expert-parallel slots (parallel.py)
    moe_tp: Optional[int] = None              # ModelConfig.moe_tp: ranks splitting each expert


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
    # (src block, dst block, n): before the step, copy the first n KV slots of src into dst (partial-block reuse of
    # a cached prefix; only for runners with `supports_kv_copy`)
    kv_copies: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)


class Runner(Protocol):
    """What the engine needs of a model runner (backend_atb's runners; the test fakes)."""
    vocab_size: int
    eos_token_ids: list[int]
    max_model_len: int
    block_size: int
    supports_prefix_cache: bool
    supports_kv_copy: bool        # executes ForwardBatch.kv_copies (enables partial-block prefix reuse)
    tokenizer_path: str
    num_blocks: int

    def determine_num_blocks(self, kv_cache_gb: float) -> int: ...

    def allocate_kv_cache(self, num_blocks: int) -> None: ...

    def execute(self, batch: ForwardBatch) -> torch.Tensor:
        """float32 logits on the CPU, one row per entry of `batch.logits_indices`, in that order."""

    def release(self, seq_id: str) -> None: ...

    def close(self) -> None: ...
