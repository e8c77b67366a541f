"""One request's state inside the engine (token ids, KV bookkeeping, sampling state, timing)."""
from __future__ import annotations

import enum
import time
from typing import Any, Optional

from .types import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"          # not yet admitted, or preempted (then recomputed from its tokens)
    RUNNING = "running"
    FINISHED = "finished"


class Request:
    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                 max_new_tokens: int, eos_token_ids: frozenset = frozenset(), arrival_time: Optional[float] = None):
        self.request_id = request_id
        self.params = params
        self.prompt_token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(self.prompt_token_ids)
        self.token_ids: list[int] = list(prompt_token_ids)   # prompt + generated
        self.max_new_tokens = max_new_tokens
        self.eos_token_ids = eos_token_ids
        self.status = RequestStatus.WAITING
        # KV state (owned by BlockManager / Scheduler)
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []
        self.num_computed_tokens = 0
        self.num_cached_block_marks = 0
        self.num_cached_tokens = -1         # prompt tokens served by the prefix cache at first admission
        self.num_preemptions = 0
        # sampling state
        self.generator: Any = None          # torch.Generator, created by the sampler on first use
        self.output_counts: dict[int, int] = {}
        # output state
        self.detokenizer: Any = None
        self.finish_reason: Optional[str] = None
        self.stop_reason: Any = None
        self.error: Optional[str] = None
        # timing
        self.arrival_time = arrival_time if arrival_time is not None else time.perf_counter()
        self.first_token_time: Optional[float] = None
        self.last_token_time: Optional[float] = None
        self.sink: Any = None               # where outputs go (AsyncEngine: (loop, asyncio.Queue))

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status == RequestStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
        self.output_counts[token_id] = self.output_counts.get(token_id, 0) + 1

    def __repr__(self) -> str:
        return (f"Request({self.request_id!r}, status={self.status.value}, tokens={self.num_tokens}, "
                f"computed={self.num_computed_tokens}, blocks={len(self.block_table)})")
