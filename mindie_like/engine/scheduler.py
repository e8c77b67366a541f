"""Continuous batching scheduler (vLLM v1 shape: one token budget per step, no separate prefill/decode phases).

Each step:
1. Running requests get their next tokens out of the budget (`max_prefill_tokens`), **decodes first** (1 token
   each), then running requests whose prefill was chunked continue.
   When the KV cache has no block left for one of them, the **newest** running request is preempted (its blocks
   are freed and it goes back to the front of the waiting queue; it is recomputed later from prompt + generated
   tokens: preemption by recomputation, requests never fail for lack of blocks).
2. Waiting requests are admitted in arrival order while the budget, `max_batch_size`, `max_prefill_batch_size` and
   free blocks allow (head-of-line: the queue is not reordered). A prefix-cache hit shortens a prompt to the tokens
   after its last cached full block, or, with partial-block reuse, after the longest cached run of tokens (the
   matched part of the next block is copied, `SchedulerOutput.kv_copies`). A prompt that does not fit the remaining budget is chunked when chunked
   prefill is on (`templateType: "Mix"`) or when it is longer than the whole budget; otherwise it waits a step.
   Nothing is admitted in a step that had to preempt.
   **Same-step prefix dedupe**: a waiting request whose next uncached full block is being computed in this step
   by an already scheduled request (a burst of requests with the same system prompt and tools, or the n choices
   of one request) waits one step instead of computing the same block again; in the next step that block is in
   the prefix cache. Admission stops there, so the queue stays in arrival order.

The scheduler only decides; `build_batch` turns its decision into the ForwardBatch the runner executes and
`update` commits the step (computed-token counts, prefix-cache registration) once the runner has run it.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Optional

import torch

from .types import ForwardBatch
from .block_manager import BlockManager
from .request import Request, RequestStatus


@dataclass
class ScheduledRequest:
    request: Request
    start: int            # num_computed_tokens before this step (position of the first new token)
    num_new_tokens: int

    @property
    def samples(self) -> bool:
        """True when this step computes the request's last known token: its logits give the next token."""
        return self.start + self.num_new_tokens == self.request.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    kv_copies: list[tuple[int, int, int]] = field(default_factory=list)   # (src block, dst block, tokens)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, block_manager: BlockManager, *, max_batch_size: int = 200, max_prefill_batch_size: int = 50,
                 max_prefill_tokens: int = 8192, chunked_prefill: bool = False):
        self.bm = block_manager
        self.block_size = block_manager.block_size
        self.max_batch_size = max(1, max_batch_size)
        self.max_prefill_batch_size = max(1, max_prefill_batch_size)
        self.max_prefill_tokens = max(1, max_prefill_tokens)
        self.chunked_prefill = chunked_prefill
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        # counters
        self.num_preemptions = 0
        self.num_prefix_deferrals = 0    # admissions put off a step by the same-step prefix dedupe
        self.prompt_tokens_total = 0
        self.cached_tokens_total = 0
        self.computed_tokens_total = 0   # tokens actually run through the model (prefill + decode)

    # ------------------------------------------------------------------ queue management
    def add(self, req: Request) -> None:
        if req.request_id in self.requests:
            raise ValueError(f"duplicate request id {req.request_id!r}")
        self.requests[req.request_id] = req
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, req: Request) -> None:
        """Removes a request (finished, aborted or failed) and frees its blocks."""
        if self.requests.pop(req.request_id, None) is None:
            return
        if req.status == RequestStatus.RUNNING:
            self.running.remove(req)
        else:
            try:
                self.waiting.remove(req)
            except ValueError:
                pass
        self.bm.free(req)
        req.status = RequestStatus.FINISHED

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self.bm.free(req)                       # num_computed_tokens -> 0: recomputed from all its tokens
        req.status = RequestStatus.WAITING
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    # ------------------------------------------------------------------ the step decision
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_prefill_tokens
        chosen: dict[str, ScheduledRequest] = {}
        num_prefills = 0

        decodes = [r for r in self.running if r.num_tokens - r.num_computed_tokens == 1]
        partial = [r for r in self.running if r.num_tokens - r.num_computed_tokens > 1]
        for req in decodes + partial:
            if budget <= 0:
                break
            if req.status != RequestStatus.RUNNING:      # preempted earlier in this step
                continue
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            while not self.bm.allocate(req, n):
                victim = self.running[-1]                 # newest first
                if victim is req:
                    victim = None
                if victim is None:
                    break
                sr = chosen.pop(victim.request_id, None)
                if sr is not None:                        # it was scheduled earlier in this step: take it back
                    budget += sr.num_new_tokens
                    if sr.num_new_tokens > 1:
                        num_prefills -= 1
                self._preempt(victim)
                out.preempted.append(victim)
            else:
                chosen[req.request_id] = ScheduledRequest(req, req.num_computed_tokens, n)
                budget -= n
                if n > 1:
                    num_prefills += 1
                continue
            # no other request to preempt: preempt this one (it retries when blocks free up)
            self._preempt(req)
            out.preempted.append(req)

        if not out.preempted:
            # blocks this step's prefill chunks complete (decodes complete generated-token blocks nobody waits for)
            computing = set()
            if self.waiting:
                for sr in chosen.values():
                    if sr.num_new_tokens > 1:
                        computing.update(self._blocks_completed(sr))
            while self.waiting and budget > 0:
                if len(self.running) >= self.max_batch_size or num_prefills >= self.max_prefill_batch_size:
                    break
                req = self.waiting[0]
                cached = self.bm.find_cached_prefix(req)
                if self._next_block_in(req, len(cached), computing):
                    self.num_prefix_deferrals += 1
                    break
                partial = self.bm.find_partial_block(req, len(cached))
                num_cached = len(cached) * self.block_size + (partial[1] if partial else 0)
                n_total = req.num_tokens - num_cached
                n = n_total
                if n > budget:
                    if self.chunked_prefill or n_total > self.max_prefill_tokens:
                        n = budget
                    else:
                        break
                if not self.bm.allocate(req, n, cached, partial):
                    break
                self.waiting.popleft()
                req.status = RequestStatus.RUNNING
                self.running.append(req)
                if req.num_cached_tokens < 0:             # first admission (not a recomputation)
                    req.num_cached_tokens = num_cached
                    self.prompt_tokens_total += req.num_prompt_tokens
                    self.cached_tokens_total += req.num_cached_tokens
                    self.bm.prefix_queries += req.num_prompt_tokens
                    self.bm.prefix_hits += req.num_cached_tokens
                sr = chosen[req.request_id] = ScheduledRequest(req, req.num_computed_tokens, n)
                computing.update(self._blocks_completed(sr))
                budget -= n
                num_prefills += 1

        out.kv_copies = self.bm.take_kv_copies()
        # decodes first in the batch, then prefills (kernels like it that way)
        out.scheduled = sorted(chosen.values(), key=lambda s: s.num_new_tokens > 1)
        return out

    def _blocks_completed(self, sr: ScheduledRequest) -> list[int]:
        """Hashes of the full blocks this scheduled step completes (they enter the prefix cache at `update`)."""
        req, bs = sr.request, self.block_size
        self.bm.compute_block_hashes(req)
        return req.block_hashes[sr.start // bs:(sr.start + sr.num_new_tokens) // bs]

    def _next_block_in(self, req: Request, num_cached: int, computing: set) -> bool:
        """True when the first full block req would compute itself is in `computing` (see the module doc)."""
        reusable = (req.num_tokens - 1) // self.block_size       # as find_cached_prefix: one token left to run
        return num_cached < min(reusable, len(req.block_hashes)) and req.block_hashes[num_cached] in computing

    # ------------------------------------------------------------------ batch building and commit
    def build_batch(self, out: SchedulerOutput) -> ForwardBatch:
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_lens: list[int] = []
        context_lens: list[int] = []
        logits_indices: list[int] = []
        seq_ids: list[str] = []
        max_blocks = max((len(s.request.block_table) for s in out.scheduled), default=1)
        block_tables = torch.zeros((len(out.scheduled), max(1, max_blocks)), dtype=torch.int32)
        for i, s in enumerate(out.scheduled):
            req, start, n = s.request, s.start, s.num_new_tokens
            end = start + n
            table = req.block_table
            seq_ids.append(req.request_id)
            input_ids.extend(req.token_ids[start:end])
            positions.extend(range(start, end))
            if n == 1:
                slots.append(table[start // bs] * bs + start % bs)
            else:
                slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            query_lens.append(n)
            context_lens.append(end)
            if table:
                block_tables[i, :len(table)] = torch.tensor(table, dtype=torch.int32)
            if s.samples:
                logits_indices.append(len(input_ids) - 1)
        return ForwardBatch(
            seq_ids=seq_ids,
            input_ids=torch.tensor(input_ids, dtype=torch.int64),
            positions=torch.tensor(positions, dtype=torch.int64),
            query_lens=query_lens,
            context_lens=context_lens,
            block_tables=block_tables,
            slot_mapping=torch.tensor(slots, dtype=torch.int64),
            logits_indices=torch.tensor(logits_indices, dtype=torch.int64),
            kv_copies=list(out.kv_copies),
        )

    def update(self, out: SchedulerOutput) -> None:
        """Commits a step the runner has executed: tokens computed, full blocks registered in the prefix cache."""
        for s in out.scheduled:
            req = s.request
            if req.status != RequestStatus.RUNNING:
                continue
            req.num_computed_tokens = s.start + s.num_new_tokens
            self.computed_tokens_total += s.num_new_tokens
            self.bm.cache_full_blocks(req)

    def get(self, request_id: str) -> Optional[Request]:
        return self.requests.get(request_id)
