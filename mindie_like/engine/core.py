"""The synchronous engine core: admission checks, one `step()` = schedule → build batch → execute → sample →
update. No threads here (AsyncEngine drives it from its own thread); tests can drive it directly.

The step is split so that tensor parallelism only has to change one seam: `execute_step(batch)` is where rank 0
would broadcast the ForwardBatch (plain CPU tensors and lists) to the worker ranks before running its own shard;
workers loop on `runner.execute(received_batch)`. Everything before (scheduling, KV bookkeeping) and after
(sampling, detokenization) happens on rank 0 only.

Preemption is by recomputation: a preempted request drops its KV blocks (the runner is told via `release`) and is
prefilled again later from prompt + generated tokens; its sampler state (generator, LogitsMask) carries on, so
nothing is replayed twice.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

import torch

from ..chat.detokenizer import IncrementalDetokenizer, special_token_ids
from .block_manager import BlockManager
from .request import Request, RequestStatus
from .sampler import Sampler, SamplingRow, new_generator
from .scheduler import Scheduler, SchedulerOutput
from .types import (EngineConfig, EngineError, EngineStats, PromptLimits, PromptRefused, RequestOutput,
                    SamplingParams)

logger = logging.getLogger("mindie_like.engine")

GiB = 1024 ** 3


class EngineCore:
    def __init__(self, config: EngineConfig, runner: Any, tokenizer: Any = None):
        self.config = config
        self.runner = runner
        self.tokenizer = tokenizer
        self.block_size = int(getattr(runner, "block_size", None) or config.block_size)
        num_blocks = int(config.num_kv_blocks) if config.num_kv_blocks else int(runner.determine_num_blocks(config.kv_cache_gb))
        if num_blocks < 1:
            raise EngineError(f"no room for a KV cache: npuMemSize={config.kv_cache_gb} GB gives {num_blocks} blocks")
        runner.allocate_kv_cache(num_blocks)
        bytes_per_block = max(1, int(runner.kv_cache_bytes_per_block()))
        num_cpu_blocks = int(config.swap_gb * GiB // bytes_per_block) if config.swap_gb > 0 else 0
        self.enable_prefix_cache = bool(config.enable_prefix_cache and getattr(runner, "supports_prefix_cache", False))
        if config.enable_prefix_cache and not self.enable_prefix_cache:
            logger.info("prefix caching off: the %s runner path does not support it", getattr(runner, "model_type", "?"))
        partial = bool(config.partial_block_reuse and getattr(runner, "supports_kv_copy", False))
        self.bm = BlockManager(num_blocks, self.block_size, self.enable_prefix_cache, num_cpu_blocks,
                               partial_reuse=partial)
        self.scheduler = Scheduler(self.bm, max_batch_size=config.max_batch_size,
                                   max_prefill_batch_size=config.max_prefill_batch_size,
                                   max_prefill_tokens=config.max_prefill_tokens,
                                   chunked_prefill=config.chunked_prefill)
        self.sampler = Sampler()
        self.eos_token_ids = frozenset(int(t) for t in (runner.eos_token_ids or []))
        self.vocab_size = int(runner.vocab_size)
        model_len = getattr(runner, "max_model_len", None) or config.max_seq_len
        self.max_seq_len = min(config.max_seq_len, int(model_len))
        self.capacity_tokens = num_blocks * self.block_size
        self.limits = PromptLimits(max_input_len=config.max_input_len, max_seq_len=self.max_seq_len,
                                   max_iter_times=config.max_iter_times, truncation=config.truncation,
                                   kv_capacity=self.capacity_tokens)
        self.special_ids = special_token_ids(tokenizer) if tokenizer is not None else set()
        self.generation_tokens_total = 0
        self.requests_finished_total = 0
        self.num_steps = 0
        self.num_failed_steps = 0
        # called after every step that ran: (phase "decode" | "prefill", seconds, sequences); the daemon's
        # metrics histogram is one (the engine stays free of the metrics library)
        self.step_observers: list[Callable[[str, float, int], None]] = []
        logger.info("KV cache: %d blocks of %d tokens (%.2f GB), %d swap blocks reported (preemption recomputes), "
                    "prefix cache %s", num_blocks, self.block_size, num_blocks * bytes_per_block / GiB,
                    num_cpu_blocks, ("on, reused to the token" if self.bm.partial_reuse else "on, by whole blocks")
                    if self.enable_prefix_cache else "off")

    # ------------------------------------------------------------------ admission
    def make_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> Request:
        """Validates and builds a request (applies maxInputTokenLen / maxSeqLen / truncation). EngineError if
        it is refused. Thread-safe (reads config only)."""
        ids = [int(t) for t in prompt_token_ids]
        bad = [t for t in ids if t < 0 or t >= self.vocab_size]
        if bad:
            raise EngineError(f"prompt token id {bad[0]} is outside the vocabulary (size {self.vocab_size})")
        if params.max_tokens is not None and params.max_tokens < 1:
            raise EngineError(f"max_tokens must be at least 1, got {params.max_tokens}")
        if params.temperature < 0 or not (0.0 < params.top_p <= 1.0) or not (0.0 <= params.min_p <= 1.0):
            raise EngineError("invalid sampling parameters (temperature >= 0, 0 < top_p <= 1, 0 <= min_p <= 1)")
        if params.repetition_penalty <= 0:
            raise EngineError("repetition_penalty must be > 0")
        try:
            ids, max_new = self.limits.fit(ids, params.max_tokens)
        except PromptRefused as e:
            raise EngineError(str(e)) from None
        req = Request(request_id, ids, params, max_new, self.eos_token_ids)
        req.generator = new_generator(params.seed) if params.temperature > 0 else None
        if self.tokenizer is not None:
            hidden = set(self.eos_token_ids)
            if not params.include_stop_str_in_output:
                hidden.update(params.stop_token_ids)
            req.detokenizer = IncrementalDetokenizer(
                self.tokenizer, ids, skip_special_tokens=params.skip_special_tokens,
                keep_special_tokens=params.keep_special_tokens, hidden_token_ids=hidden, stop=params.stop,
                include_stop_str_in_output=params.include_stop_str_in_output, special_ids=self.special_ids)
        return req

    def add_request(self, req: Request) -> None:
        try:
            self.scheduler.add(req)
        except ValueError as e:
            raise EngineError(str(e)) from None

    def abort_request(self, request_id: str, reason: str = "abort", error: Optional[str] = None
                      ) -> Optional[tuple[Request, RequestOutput]]:
        req = self.scheduler.get(request_id)
        if req is None:
            return None
        return req, self._finish(req, reason, error=error)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # ------------------------------------------------------------------ the step
    def execute_step(self, batch) -> torch.Tensor:
        """The seam for tensor parallelism: rank 0 broadcasts `batch` here, then runs its shard."""
        return self.runner.execute(batch)

    def step(self) -> list[tuple[Request, RequestOutput]]:
        """Runs one scheduling step; returns (request, output) for each request that produced something."""
        sched = self.scheduler.schedule()
        for req in sched.preempted:
            self._release(req)
        if sched.is_empty:
            return []
        self.num_steps += 1
        t0 = time.perf_counter()
        try:
            batch = self.scheduler.build_batch(sched)
            logits = self.execute_step(batch)
            self.scheduler.update(sched)
            outs = self._process(sched, logits, t0)
        except Exception as e:  # noqa: BLE001 - one bad step fails its requests, not the engine
            self.num_failed_steps += 1
            logger.exception("engine step failed; failing its %d requests", len(sched.scheduled))
            msg = f"{type(e).__name__}: {e}"
            outs = []
            for s in sched.scheduled:
                req = s.request
                if not req.is_finished:
                    # its KV of this step (a partial-block copy included) may not have been written: nothing of
                    # its last block is kept as a copy source when it is freed
                    req.num_computed_tokens = s.start // self.block_size * self.block_size
                    out = self._finish(req, "error", error=msg)
                    out.backend_failed = True     # the forward step, not the request, failed: HTTP 500
                    outs.append((req, out))
            return outs
        if self.step_observers:
            self._observe_step(sched, time.perf_counter() - t0)
        return outs

    def _observe_step(self, sched: SchedulerOutput, seconds: float) -> None:
        """A decode step: every sequence computes one token past its prompt (else prefill, chunks and mixed)."""
        decode = all(s.num_new_tokens == 1 and s.start >= s.request.num_prompt_tokens for s in sched.scheduled)
        for observe in self.step_observers:
            try:
                observe("decode" if decode else "prefill", seconds, len(sched.scheduled))
            except Exception:  # noqa: BLE001 - an observer's bug must not fail the step
                logger.exception("step observer failed")

    def _process(self, sched: SchedulerOutput, logits: torch.Tensor, t0: float) -> list[tuple[Request, RequestOutput]]:
        sampled = [s.request for s in sched.scheduled if s.samples]
        if not sampled:
            return []
        if logits.shape[0] != len(sampled):
            raise RuntimeError(f"runner returned {logits.shape[0]} logits rows for {len(sampled)} sampled sequences")
        rows = []
        for req in sampled:
            p = req.params
            masked: list[int] = []
            if req.num_output_tokens < p.min_tokens:
                if not p.ignore_eos:
                    masked.extend(self.eos_token_ids)
                masked.extend(p.stop_token_ids)
            rows.append(SamplingRow(p, req.token_ids, req.num_prompt_tokens, req.output_counts, req.generator,
                                    masked))
        tokens, logprobs = self.sampler(logits[:, :self.vocab_size] if logits.shape[1] > self.vocab_size
                                        else logits, rows)
        now = time.perf_counter()
        step_ms = (now - t0) * 1000.0
        outs = []
        row_errors = self.sampler.row_errors
        for i, (req, tok, lp) in enumerate(zip(sampled, tokens, logprobs)):
            if i in row_errors:
                outs.append((req, self._finish(req, "error", error=row_errors[i])))
                continue
            try:
                outs.append((req, self._append(req, tok, lp, now, step_ms)))
            except Exception as e:  # noqa: BLE001 - e.g. a LogitsMask.accept bug: this request only
                logger.exception("request %s failed after sampling", req.request_id)
                if not req.is_finished:
                    outs.append((req, self._finish(req, "error", error=f"{type(e).__name__}: {e}")))
        return outs

    def _append(self, req: Request, tok: int, lp, now: float, step_ms: float) -> RequestOutput:
        p = req.params
        req.append_token(tok)
        self.generation_tokens_total += 1
        first = req.first_token_time is None
        prefill_ms = decode_ms = None
        if first:
            req.first_token_time = now
            prefill_ms = (now - req.arrival_time) * 1000.0
        else:
            decode_ms = (now - req.last_token_time) * 1000.0
        req.last_token_time = now
        n_out = req.num_output_tokens
        reason = None
        stop_reason = None
        if p.logits_mask is not None:
            if not p.logits_mask.accept(tok):
                logger.warning("request %s: constrained decoding rejected token %d", req.request_id, tok)
            if p.logits_mask.is_finished():
                reason = "stop"
        if reason is None and tok in self.eos_token_ids and not p.ignore_eos and n_out >= p.min_tokens:
            reason = "stop"
        if reason is None and tok in p.stop_token_ids and n_out >= p.min_tokens:
            reason, stop_reason = "stop", tok
        text = ""
        det = req.detokenizer
        if det is not None:
            text = det.add_tokens([tok], check_stop=n_out >= p.min_tokens)
            if det.stopped and reason is None:
                reason, stop_reason = "stop", det.stop_str
        if reason is None and n_out >= req.max_new_tokens:
            reason = "length"
        if reason is not None:
            out = self._finish(req, reason, stop_reason=stop_reason, text=text, new_token_ids=[tok])
        else:
            out = self._output(req, [tok], text)
        out.logprobs = [lp] if lp is not None else None
        out.prefill_time_ms = prefill_ms
        out.decode_time_ms = decode_ms
        return out

    def _output(self, req: Request, new_ids: list[int], text: str) -> RequestOutput:
        return RequestOutput(request_id=req.request_id, new_token_ids=new_ids, text_delta=text,
                             num_prompt_tokens=req.num_prompt_tokens,
                             num_cached_tokens=max(0, req.num_cached_tokens),
                             num_output_tokens=req.num_output_tokens)

    def _finish(self, req: Request, reason: str, *, stop_reason: Any = None, error: Optional[str] = None,
                text: str = "", new_token_ids: Optional[list[int]] = None) -> RequestOutput:
        if req.detokenizer is not None and reason in ("stop", "length") and not req.detokenizer.stopped:
            text += req.detokenizer.finish()
        was_live = req.status != RequestStatus.FINISHED
        self.scheduler.finish(req)
        self._release(req)
        if was_live:
            self.requests_finished_total += 1
        req.finish_reason, req.stop_reason, req.error = reason, stop_reason, error
        out = self._output(req, new_token_ids or [], text)
        out.finished, out.finish_reason, out.stop_reason, out.error = True, reason, stop_reason, error
        return out

    def _release(self, req: Request) -> None:
        try:
            self.runner.release(req.request_id)
        except Exception:  # noqa: BLE001
            logger.exception("runner.release(%s) failed", req.request_id)

    def fail_all(self, error: str) -> list[tuple[Request, RequestOutput]]:
        outs = []
        for req in list(self.scheduler.running) + list(self.scheduler.waiting):
            outs.append((req, self._finish(req, "error", error=error)))
        return outs

    # ------------------------------------------------------------------ stats
    def stats(self) -> EngineStats:
        s = self.scheduler
        return EngineStats(
            running=len(s.running), waiting=len(s.waiting), swapped=0,
            total_blocks=self.bm.num_blocks, free_blocks=self.bm.num_free_blocks,
            total_cpu_blocks=self.bm.num_cpu_blocks, free_cpu_blocks=self.bm.num_cpu_blocks,
            block_size=self.block_size, prompt_tokens_total=s.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total, cached_tokens_total=s.cached_tokens_total,
            requests_finished_total=self.requests_finished_total)

