"""Shared pieces of the serving layer: options, sampling parameters, the engine pump, SSE, usage, logprobs."""
from __future__ import annotations

import asyncio
from contextlib import aclosing
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Container, Optional

try:
    import orjson

    def dumps(obj) -> bytes:
        return orjson.dumps(obj)
except ImportError:  # pragma: no cover
    import json

    def dumps(obj) -> bytes:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()

from ..engine.types import EngineError, EngineOverloaded, RequestOutput, SamplingParams
from ..protocol.errors import (GENERATION_ERROR, INCOMPLETE_GENERATION, SERVICE_UNAVAILABLE, ValidationFailure,
                               invalid)

log = logging.getLogger("mindie_like.serving")

BENCHMARK_ENV = "MINDIE_LLM_BENCHMARK_ENABLE"
DONE = b"data: [DONE]\n\n"


@dataclass
class ServingOptions:
    """Per-model serving options (from the daemon config and the model's generation_config.json)."""
    enable_reasoning: bool = False            # models.<type>.enable_reasoning
    lenient_recovery: bool = True             # models.<type>.tool_call_options.lenient_recovery
    max_n: int = 16                           # upper bound of `n`
    max_input_len: Optional[int] = None       # ModelDeployConfig.maxInputTokenLen
    max_seq_len: Optional[int] = None         # ModelDeployConfig.maxSeqLen (prompt + output)
    max_iter_times: Optional[int] = None      # ScheduleConfig.maxIterTimes (cap on generated tokens)
    truncation: int = 0                       # 0 reject a too-long prompt, -1 keep its tail, 1 keep its head
    default_sampling: dict[str, Any] = field(default_factory=dict)  # generation_config.json: temperature, top_p...
    token_timeout_s: Optional[float] = None   # ServerConfig.tokenTimeout
    e2e_timeout_s: Optional[float] = None     # ServerConfig.e2eTimeout
    benchmark: Optional[bool] = None          # None: env MINDIE_LLM_BENCHMARK_ENABLE in ("1", "2") per request
    strict_tools: bool = False                # models.<type>.tool_call_options.strict: tools without a "strict"
                                              # of their own are strict (grammar from the call marker on in auto)


GENERATION_CONFIG_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                          "frequency_penalty")


def defaults_from_generation_config(cfg: dict) -> dict[str, Any]:
    """The sampling defaults a model's generation_config.json carries (only the keys we honour)."""
    out = {k: cfg[k] for k in GENERATION_CONFIG_KEYS if isinstance(cfg.get(k), (int, float))
           and not isinstance(cfg.get(k), bool)}
    if cfg.get("do_sample") is False:
        out["temperature"] = 0.0
    return out


def defaults_from_model_dir(model_dir) -> dict[str, Any]:
    """defaults_from_generation_config of `<model_dir>/generation_config.json` ({} when absent or unreadable)."""
    import json
    from pathlib import Path
    p = Path(model_dir) / "generation_config.json"
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return defaults_from_generation_config(cfg) if isinstance(cfg, dict) else {}


def benchmark_enabled(options: ServingOptions) -> bool:
    if options.benchmark is not None:
        return options.benchmark
    return os.environ.get(BENCHMARK_ENV, "").strip() in ("1", "2")


def new_call_id(family: Optional[str] = None) -> str:
    """An id for a call the server makes up, in the style of the family (its own definition says which)."""
    from ..tool_call import call_id_for
    return call_id_for(family)


def sse(obj) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def sse_error(exc: ValidationFailure) -> bytes:
    return sse(exc.to_body())


# ----------------------------------------------------------------------------------------------- prompt

def input_token_limit(options: ServingOptions) -> Optional[int]:
    """The most prompt tokens a request may have (maxInputTokenLen, and maxSeqLen less one), or None."""
    limit = options.max_input_len
    if options.max_seq_len:
        limit = min(limit, options.max_seq_len - 1) if limit else options.max_seq_len - 1
    return limit or None


def refuse_untokenizable_length(n_chars: int, options: ServingOptions, tokenizer) -> None:
    """Before tokenizing: a prompt of more characters than the token limit could hold even if every token were
    the vocabulary's longest is refused at once (a 5 MB prompt costs seconds of tokenizing otherwise). Only when
    too-long prompts are refused anyway (truncation 0)."""
    limit = input_token_limit(options)
    per_token = getattr(tokenizer, "max_token_chars", None)
    if options.truncation == 0 and limit and per_token and n_chars > limit * per_token:
        raise invalid(f"prompt: {n_chars} characters is more than the limit of {limit} tokens can hold "
                      f"(maxInputTokenLen)")


def fit_prompt(ids: list[int], options: ServingOptions, max_tokens: Optional[int]) -> tuple[list[int], Optional[int]]:
    """Apply maxInputTokenLen / truncation / maxSeqLen; return (prompt ids, max_tokens capped to what fits)."""
    limit = input_token_limit(options)
    if limit and len(ids) > limit:
        if options.truncation == -1:
            ids = ids[-limit:]
        elif options.truncation == 1:
            ids = ids[:limit]
        else:
            raise invalid(f"prompt: {len(ids)} tokens is more than the limit of {limit} (maxInputTokenLen)")
    if not ids:
        raise invalid("prompt: the prompt is empty")
    cap = None
    if options.max_seq_len:
        cap = options.max_seq_len - len(ids)
    if options.max_iter_times:
        cap = min(cap, options.max_iter_times) if cap is not None else options.max_iter_times
    if cap is not None:
        max_tokens = min(max_tokens, cap) if max_tokens is not None else cap
    return ids, max_tokens


def build_sampling_params(req, options: ServingOptions, *, max_tokens: Optional[int], choice: int,
                          keep_special: frozenset = frozenset(), logits_mask=None,
                          vocab_size: Optional[int] = None) -> SamplingParams:
    d = options.default_sampling

    def pick(name, fallback):
        v = getattr(req, name, None)
        if v is not None:
            return v
        return d.get(name, fallback)

    if vocab_size and req.stop_token_ids:
        for i, t in enumerate(req.stop_token_ids):
            if t >= vocab_size:
                raise invalid(f"stop_token_ids[{i}]: {t} is not in [0, {vocab_size - 1}]")
    seed = req.seed
    if seed is not None and choice:
        seed = (seed + choice) % (2**64)
    return SamplingParams(
        max_tokens=max_tokens,
        min_tokens=req.min_tokens or 0,
        temperature=float(pick("temperature", 1.0)),
        top_k=int(pick("top_k", -1)) or -1,
        top_p=float(pick("top_p", 1.0)),
        min_p=float(pick("min_p", 0.0)),
        repetition_penalty=float(pick("repetition_penalty", 1.0)),
        presence_penalty=float(pick("presence_penalty", 0.0)),
        frequency_penalty=float(pick("frequency_penalty", 0.0)),
        seed=seed,
        stop=list(req.stop or []),
        stop_token_ids=list(req.stop_token_ids or []),
        include_stop_str_in_output=req.include_stop_str_in_output,
        ignore_eos=req.ignore_eos,
        skip_special_tokens=req.skip_special_tokens,
        keep_special_tokens=frozenset(keep_special),
        logprobs=req.top_logprobs_k,
        logits_mask=logits_mask,
    )


# ----------------------------------------------------------------------------------------------- engine pump

def map_engine_exception(exc: BaseException) -> ValidationFailure:
    if isinstance(exc, ValidationFailure):
        return exc
    if isinstance(exc, EngineOverloaded):
        return ValidationFailure(503, f"Service Unavailable: {exc}" if str(exc) else "Service Unavailable: the "
                                 "engine is overloaded", SERVICE_UNAVAILABLE)
    if isinstance(exc, EngineError):
        return ValidationFailure(424, str(exc) or "the engine refused the request", GENERATION_ERROR)
    if isinstance(exc, asyncio.TimeoutError):
        return ValidationFailure(500, "Engine callback timeout", INCOMPLETE_GENERATION)
    log.error("internal error during generation: %s: %s", type(exc).__name__, exc, exc_info=exc)
    return ValidationFailure(500, f"internal error during generation ({type(exc).__name__})", INCOMPLETE_GENERATION)


@dataclass
class Job:
    key: int                     # choice index (or prompt*n+choice)
    prompt_ids: list[int]
    params: SamplingParams
    request_id: str


async def pump(engine, jobs: list[Job], *, token_timeout: Optional[float] = None,
               e2e_timeout: Optional[float] = None,
               stopped: Container[str] = ()) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Run every job on the engine concurrently and yield (key, output) in arrival order.

    Raises ValidationFailure (424/503/500) on an engine error. Whatever ends the iteration early (an error, the
    consumer cancelled because the client went away, aclose()), every unfinished engine request is aborted.
    An engine abort of a request id in `stopped` (stopped on purpose, e.g. by stopInfer) is yielded as its
    normal last output instead of an error.
    """
    queue: asyncio.Queue = asyncio.Queue()
    finished: set[str] = set()
    by_key = {j.key: j for j in jobs}

    async def run(job: Job):
        try:
            async for out in engine.generate(job.prompt_ids, job.params, job.request_id):
                queue.put_nowait((job.key, out, None))
            queue.put_nowait((job.key, None, None))
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - forwarded to the consumer
            queue.put_nowait((job.key, None, e))

    tasks = [asyncio.create_task(run(j)) for j in jobs]
    remaining = len(jobs)
    deadline = time.monotonic() + e2e_timeout if e2e_timeout else None
    try:
        while remaining:
            timeout = token_timeout
            if deadline is not None:
                left = max(0.0, deadline - time.monotonic())
                timeout = left if timeout is None else min(timeout, left)
            if timeout is None:
                key, out, exc = await queue.get()
            else:
                key, out, exc = await asyncio.wait_for(queue.get(), timeout)
            if exc is not None:
                finished.add(by_key[key].request_id)
                raise map_engine_exception(exc)
            if out is None:
                finished.add(by_key[key].request_id)
                remaining -= 1
                continue
            if out.finish_reason == "error":
                finished.add(by_key[key].request_id)
                if out.backend_failed:      # not the request's fault: the forward step or the backend failed
                    raise ValidationFailure(500, out.error or "the model backend failed", INCOMPLETE_GENERATION)
                raise ValidationFailure(424, out.error or "generation failed", GENERATION_ERROR)
            if out.finish_reason == "abort" and by_key[key].request_id not in stopped:
                # not ours (we stop reading before aborting): the engine is stopping
                finished.add(by_key[key].request_id)
                raise ValidationFailure(503, "Service Unavailable: the request was aborted by the engine",
                                        SERVICE_UNAVAILABLE)
            if out.finished:
                finished.add(by_key[key].request_id)
            yield key, out
    except asyncio.TimeoutError:
        raise ValidationFailure(500, "Engine callback timeout", INCOMPLETE_GENERATION) from None
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        for j in jobs:
            if j.request_id not in finished:
                try:
                    await engine.abort(j.request_id)
                except Exception as e:  # noqa: BLE001
                    log.warning("abort of %s failed: %s", j.request_id, e)


# ----------------------------------------------------------------------------------------------- logprobs, usage

@dataclass(kw_only=True)
class OutputTally:
    """Per-choice accounting of engine outputs shared by the chat and completion routes (usage, timings, finish)."""
    num_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    engine_finish: Optional[str] = None
    stop_reason: Any = None                  # the stop string or stop token id that ended it (None: EOS, length)
    prefill_ms: Optional[float] = None
    decode_ms: list[float] = field(default_factory=list)

    def record(self, out: RequestOutput) -> list[int]:
        """Counts one engine output; returns its new token ids. A step may yield several ids, hence the max."""
        ids = out.new_token_ids or []
        self.num_tokens = max(self.num_tokens + len(ids), out.num_output_tokens or 0)
        if out.num_prompt_tokens:
            self.prompt_tokens = out.num_prompt_tokens
        if out.num_cached_tokens:
            self.cached_tokens = out.num_cached_tokens
        if out.prefill_time_ms is not None and self.prefill_ms is None:
            self.prefill_ms = out.prefill_time_ms
        elif out.decode_time_ms is not None:
            self.decode_ms.append(out.decode_time_ms)
        if out.finished:
            self.engine_finish = out.finish_reason
            self.stop_reason = out.stop_reason
        return ids


def chat_logprob_entries(tokenizer, lps) -> list[dict]:
    out = []
    for lp in lps or ():
        tok = tokenizer.token_text(lp.token_id)
        out.append({
            "token": tok, "logprob": float(lp.logprob), "bytes": list(tok.encode("utf-8")),
            "top_logprobs": [{"token": (t := tokenizer.token_text(tid)), "logprob": float(v),
                              "bytes": list(t.encode("utf-8"))} for tid, v in lp.top],
        })
    return out


def usage_dict(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
               reasoning_tokens: Optional[int] = None) -> dict:
    u = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
         "total_tokens": prompt_tokens + completion_tokens,
         "prompt_tokens_details": {"cached_tokens": cached_tokens}}
    if reasoning_tokens is not None:
        u["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return u


def finish_reason_of(out_reason: Optional[str]) -> str:
    return "length" if out_reason == "length" else "stop"


def strip_end_of_turn(tokenizer, text: str, token_ids: list[int]) -> str:
    """Remove the text of end-of-turn tokens (<|im_end|>, <|eot_id|>, ...) that the engine let through."""
    eot = getattr(tokenizer, "end_of_turn_ids", frozenset())
    if not text or not eot:
        return text
    for tid in token_ids:
        if tid in eot:
            s = tokenizer.token_text(tid)
            pos = text.rfind(s) if s else -1
            if pos >= 0:
                text = text[:pos] + text[pos + len(s):]
    return text


class Observer:
    """Feeds a metrics sink (duck-typed like server.Metrics: observe_ttft, observe_token_time, observe_e2e,
    add_tokens, request_success, request_failed) from one request's outputs. Never raises."""

    def __init__(self, metrics=None):
        self.metrics = metrics
        self.t0 = time.monotonic()
        self.first = True
        self.last: dict[int, float] = {}
        self.usage: Optional[dict] = None
        self.errored = False
        self.done = False

    def _call(self, name, *args, **kw):
        fn = getattr(self.metrics, name, None)
        if fn is not None:
            try:
                fn(*args, **kw)
            except Exception as e:  # noqa: BLE001
                log.debug("metrics %s failed: %s", name, e)

    def output(self, key: int, out: RequestOutput) -> None:
        if self.metrics is None:
            return
        now = time.monotonic()
        if self.first:
            self.first = False
            self._call("observe_ttft", now - self.t0)
        prev = self.last.get(key)
        n = len(out.new_token_ids or ())
        if prev is not None and n:
            per = (now - prev) / n
            for _ in range(n):
                self._call("observe_token_time", per)
        self.last[key] = now

    def finish(self, success: bool) -> None:
        if self.done or self.metrics is None:
            self.done = True
            return
        self.done = True
        if success and not self.errored:
            self._call("observe_e2e", time.monotonic() - self.t0)
            if self.usage:
                self._call("add_tokens", prompt=self.usage.get("prompt_tokens", 0),
                           generation=self.usage.get("completion_tokens", 0))
            self._call("request_success")
        else:
            self._call("request_failed")


class ObservedServing:
    """The public create/stream of a serving object: metrics bookkeeping around its `_create` / `_stream`, and the
    engine pump with the configured timeouts. Subclasses set engine, options, metrics."""

    engine: Any
    options: ServingOptions
    metrics: Any

    def _pump(self, prep):
        return pump(self.engine, prep.jobs, token_timeout=self.options.token_timeout_s,
                    e2e_timeout=self.options.e2e_timeout_s)

    async def create(self, request_dict: dict, request_id: str, **options) -> dict:
        """Non-streaming answer. Raises ValidationFailure (422/424/500/503). `options`: per-request serving
        options of the subclass (ChatServing: `strict_tools`)."""
        obs = Observer(self.metrics)
        try:
            body = await self._create(request_dict, request_id, obs, **options)
        except BaseException:
            obs.finish(False)
            raise
        if obs.usage is None and isinstance(body, dict):
            obs.usage = body.get("usage")
        obs.finish(True)
        return body

    def _error_chunks(self, failure: ValidationFailure) -> list[bytes]:
        """What a stream sends for an error after its first byte: one SSE error event, then `[DONE]`."""
        return [sse_error(failure), DONE]

    async def stream(self, request_dict: dict, request_id: str, **options) -> AsyncIterator[bytes]:
        """SSE bytes ending with `data: [DONE]`. ValidationFailure comes from the first `__anext__`, before any
        byte; later errors are one error event before `[DONE]`. aclose()/cancel aborts the engine requests."""
        obs = Observer(self.metrics)
        ok = sent = False
        try:
            agen = self._stream(request_dict, request_id, obs, **options)
            async with aclosing(agen):
                try:
                    async for chunk in agen:
                        sent = True
                        yield chunk
                except ValidationFailure as e:
                    if not sent:
                        raise
                    obs.errored = True
                    for chunk in self._error_chunks(e):
                        yield chunk
                except Exception as e:  # noqa: BLE001 - never a traceback to the client
                    log.exception("%s stream %s failed", type(self).__name__, request_id)
                    failure = ValidationFailure(500, f"internal error ({type(e).__name__})", INCOMPLETE_GENERATION)
                    if not sent:
                        raise failure from None
                    obs.errored = True
                    for chunk in self._error_chunks(failure):
                        yield chunk
            ok = True
        finally:
            obs.finish(ok)
