"""AsyncEngine: the EngineCore driven by one background thread, streamed to asyncio callers.

    engine = AsyncEngine.from_config(EngineConfig(model_path=...))       # loads ModelRunner when runner is None
    async for out in engine.generate(prompt_token_ids, SamplingParams(...), "req-1"):
        ...                                                                # RequestOutput per step
    await engine.abort("req-1"); engine.stats(); engine.tokenizer; engine.shutdown()

Threading: callers (any asyncio loop, any thread) only append commands (add / abort) to a deque under a
condition variable; the engine thread drains the commands between steps, runs `core.step()`, and hands each
step's outputs to the callers' loops with one `loop.call_soon_threadsafe` per loop per step, into per-request
asyncio queues. With nothing to do the thread sleeps on the condition variable (no busy spin). An exception in
a step fails that step's requests with finish_reason "error" and the loop goes on.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
from typing import Any, AsyncIterator, Optional

from ..cpu_threads import release_openmp_pool
from .core import EngineCore
from .request import Request
from .types import (EngineConfig, EngineError, EngineOverloaded, EngineStats, PromptLimits, RequestOutput,
                    SamplingParams)

logger = logging.getLogger("mindie_like.engine")


class AsyncEngine:
    def __init__(self, config: EngineConfig, runner: Any, tokenizer: Any = None):
        self.config = config
        self.runner = runner
        self.tokenizer = tokenizer
        self.core = EngineCore(config, runner, tokenizer)
        self._cv = threading.Condition()
        self._cmds: collections.deque = collections.deque()
        self._live: dict[str, Request] = {}       # request id -> request, from generate() until its final output
        self._pending_adds = 0
        self._stopping = False
        # torch's intra-op thread count is per OS thread under OpenMP: the step thread uses the creator's setting
        # (the runner configures it from the cores actually available)
        import torch
        self._torch_threads = torch.get_num_threads()
        self._thread = threading.Thread(target=self._run, name="mindie-engine", daemon=True)
        self._thread.start()
        # the steps' OpenMP team is the engine thread's: a second team left in this thread (from loading the model)
        # makes libgomp put the step's workers to sleep after every parallel region
        release_openmp_pool()

    @classmethod
    def from_config(cls, config: EngineConfig, runner: Any = None, tokenizer: Any = None) -> "AsyncEngine":
        if runner is None:
            from ..backend_atb.runner import ModelRunner
            runner = ModelRunner.load(config)
        if tokenizer is None:
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(runner.tokenizer_path,
                                                      trust_remote_code=config.trust_remote_code)
        return cls(config, runner, tokenizer)

    # ------------------------------------------------------------------ public API
    async def generate(self, prompt_token_ids: list[int], sampling_params: SamplingParams,
                       request_id: str) -> AsyncIterator[RequestOutput]:
        """Streams RequestOutputs until one has `finished`. Raises EngineError (refused: too long, bad
        parameters, duplicate id) or EngineOverloaded (waiting queue full) on the first iteration, before any
        output. Closing or cancelling the iterator early aborts the request."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        req = self.core.make_request(request_id, prompt_token_ids, sampling_params)
        req.sink = (loop, queue)
        with self._cv:
            if self._stopping or not self._thread.is_alive():
                raise EngineError("the engine is not running")
            if request_id in self._live:
                raise EngineError(f"duplicate request id {request_id!r}")
            qmax = self.config.max_queue_size
            # requests not yet added count against the free batch slots first, then against the queue: a burst
            # that arrives before the engine thread has moved any of them to running is not refused early
            sched = self.core.scheduler
            free_slots = max(0, sched.max_batch_size - len(sched.running))
            if qmax > 0 and len(sched.waiting) + self._pending_adds >= qmax + free_slots:
                raise EngineOverloaded(f"the waiting queue is full ({qmax} requests)")
            self._live[request_id] = req
            self._pending_adds += 1
            self._cmds.append(("add", req, None))
            self._cv.notify()
        finished = False
        try:
            while True:
                out = await queue.get()
                if out.finished:
                    finished = True
                yield out
                if finished:
                    return
        finally:
            if not finished:
                self._abort_nowait(request_id)

    async def abort(self, request_id: str) -> None:
        """Aborts a request (no-op if unknown or finished); returns once its blocks are freed."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._abort_nowait(request_id, (loop, fut))
        await fut

    def stats(self) -> EngineStats:
        return self.core.stats()

    @property
    def prompt_limits(self) -> PromptLimits:
        """The limits every request is fitted to (the config's, the model's context length, the KV cache's)."""
        return self.core.limits

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stops the loop: outstanding requests end with finish_reason "abort"."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive()

    # ------------------------------------------------------------------ internals
    def _abort_nowait(self, request_id: str, done: Optional[tuple] = None) -> None:
        with self._cv:
            self._cmds.append(("abort", request_id, done))
            self._cv.notify()

    def _run(self) -> None:
        import torch
        torch.set_num_threads(self._torch_threads)
        core = self.core
        while True:
            with self._cv:
                while not self._cmds and not core.has_work() and not self._stopping:
                    self._cv.wait()
                cmds = list(self._cmds)
                self._cmds.clear()
                stopping = self._stopping
            outs: list[tuple[Request, RequestOutput]] = []
            dones: list[tuple] = []
            for kind, arg, done in cmds:
                if kind == "add":
                    with self._cv:
                        self._pending_adds -= 1
                    try:
                        core.add_request(arg)
                    except EngineError as e:
                        out = RequestOutput(request_id=arg.request_id, new_token_ids=[], text_delta="",
                                            finished=True, finish_reason="error", error=str(e))
                        outs.append((arg, out))
                else:
                    r = core.abort_request(arg)
                    if r is not None:
                        outs.append(r)
                    if done is not None:
                        dones.append(done)
            if stopping:
                outs.extend(core.fail_all("the engine shut down"))
                for _, o in outs:
                    if o.finish_reason == "error" and o.error == "the engine shut down":
                        o.finish_reason = "abort"
                self._deliver(outs, dones)
                return
            if core.has_work():
                try:
                    outs.extend(core.step())
                except Exception as e:  # noqa: BLE001 - a scheduler bug: fail everything, keep serving
                    logger.exception("engine loop error")
                    try:
                        outs.extend(core.fail_all(f"{type(e).__name__}: {e}"))
                    except Exception:  # noqa: BLE001
                        logger.exception("could not fail requests after an engine loop error")
            self._deliver(outs, dones)

    def _deliver(self, outs: list[tuple[Request, RequestOutput]], dones: list[tuple]) -> None:
        by_loop: dict[Any, list] = {}
        for req, out in outs:
            if out.finished:
                with self._cv:
                    if self._live.get(req.request_id) is req:
                        del self._live[req.request_id]
            if req.sink is None:
                continue
            loop, queue = req.sink
            by_loop.setdefault(loop, []).append((queue, out))
        for loop, done in dones:
            by_loop.setdefault(loop, []).append((done, None))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_dispatch, items)
            except RuntimeError:      # the caller's loop is closed: its requests are gone
                for req, out in outs:
                    if req.sink is not None and req.sink[0] is loop and not out.finished:
                        self._abort_nowait(req.request_id)


def _dispatch(items: list) -> None:
    for target, out in items:
        if out is None:
            if not target.done():
                target.set_result(None)
        else:
            target.put_nowait(out)
