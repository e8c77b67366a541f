"""/v1/completions without HTTP: prompt (text or token ids) → engine calls → text_completion response/chunks."""
from __future__ import annotations

import asyncio
import json
import logging
from contextlib import aclosing
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional

from ..protocol.errors import INCOMPLETE_GENERATION, ValidationFailure, invalid
from ..protocol.requests import CompletionRequest, parse_completion_request
from ..chat.tokenizer import ensure_tokenizer
from .common import (DONE, Job, ObservedServing, Observer, OutputTally, ServingOptions, benchmark_enabled,
                     build_sampling_params, finish_reason_of, fit_prompt, refuse_untokenizable_length, sse,
                     usage_dict)

log = logging.getLogger("mindie_like.serving")


@dataclass
class _CChoice(OutputTally):
    index: int
    prompt_index: int
    echo_text: str = ""
    parts: list[str] = field(default_factory=list)
    lp_tokens: list[str] = field(default_factory=list)
    lp_values: list[float] = field(default_factory=list)
    lp_top: list[dict] = field(default_factory=list)
    lp_offsets: list[int] = field(default_factory=list)
    text_len: int = 0
    started: bool = False
    done: bool = False


@dataclass
class _CPrepared:
    req: CompletionRequest
    request_id: str
    response_id: str
    created: int
    prompts: list[list[int]]
    jobs: list[Job]


class CompletionServing(ObservedServing):
    """Serves /v1/completions for one model (same sampling parameters as chat; no templates, no tools)."""

    def __init__(self, engine, tokenizer, model_name: str, options: Optional[ServingOptions] = None,
                 metrics: Any = None):
        self.engine = engine
        self.metrics = metrics
        self.tokenizer = ensure_tokenizer(tokenizer)
        self.model_name = model_name
        self.options = options or ServingOptions()

    @staticmethod
    def wants_stream(request_dict: Any) -> bool:
        return isinstance(request_dict, dict) and request_dict.get("stream") is True

    async def _prepare_checked(self, request_dict, request_id: str):
        try:
            return await self._prepare(request_dict, request_id)
        except ValidationFailure:
            raise
        except Exception as e:  # noqa: BLE001 - a bug or a broken tokenizer: never a traceback to the client
            log.exception("completion request %s could not be prepared", request_id)
            raise ValidationFailure(500, f"internal error ({type(e).__name__})", INCOMPLETE_GENERATION) from None

    async def _prepare(self, request_dict: dict, request_id: str) -> _CPrepared:
        req = parse_completion_request(request_dict, max_n=self.options.max_n)
        if req.model != self.model_name:
            raise invalid(f"model: Model not found: {json.dumps(req.model, ensure_ascii=False)}")
        if req.suffix:
            raise invalid("suffix: not supported")
        prompts, jobs = [], []
        n = req.num_choices
        multi = n * len(req.prompts) > 1
        for p_i, p in enumerate(req.prompts):
            if isinstance(p, str):
                refuse_untokenizable_length(len(p), self.options, self.tokenizer)
                # off the event loop: a long prompt takes a while to tokenize
                ids = await asyncio.to_thread(self.tokenizer.encode, p, add_special_tokens=True)
            else:
                ids = list(p)
                bad = [t for t in ids if t >= self.tokenizer.vocab_size]
                if bad:
                    raise invalid(f"prompt: token id {bad[0]} is not in [0, {self.tokenizer.vocab_size - 1}]")
            ids, max_tokens = fit_prompt(ids, self.options, req.effective_max_tokens)
            prompts.append(ids)
            for i in range(n):
                key = p_i * n + i
                params = build_sampling_params(req, self.options, max_tokens=max_tokens, choice=i,
                                               vocab_size=self.tokenizer.vocab_size)
                jobs.append(Job(key, ids, params, f"{request_id}-{key}" if multi else request_id))
        return _CPrepared(req, request_id, f"cmpl-{request_id}", int(time.time()), prompts, jobs)

    def _new_choices(self, prep: _CPrepared) -> list[_CChoice]:
        n = prep.req.num_choices
        out = []
        for key in range(len(prep.jobs)):
            c = _CChoice(index=key, prompt_index=key // n)
            if prep.req.echo:
                p = prep.req.prompts[c.prompt_index]
                c.echo_text = p if isinstance(p, str) else self.tokenizer.decode(p)
                c.text_len = len(c.echo_text)
            out.append(c)
        return out

    def _record(self, prep: _CPrepared, c: _CChoice, out) -> str:
        c.record(out)
        text = out.text_delta or ""
        if prep.req.logprobs is not None and out.logprobs:
            for lp in out.logprobs:
                tok = self.tokenizer.token_text(lp.token_id)
                c.lp_tokens.append(tok)
                c.lp_values.append(float(lp.logprob))
                c.lp_top.append({self.tokenizer.token_text(t): float(v) for t, v in lp.top})
                c.lp_offsets.append(c.text_len)
                c.text_len += len(tok)
        c.parts.append(text)
        return text

    def _lp_since(self, c: _CChoice, start: int) -> dict:
        return {"tokens": c.lp_tokens[start:], "token_logprobs": c.lp_values[start:],
                "top_logprobs": c.lp_top[start:], "text_offset": c.lp_offsets[start:]}

    def _usage(self, prep: _CPrepared, choices: list[_CChoice]) -> dict:
        n = prep.req.num_choices
        prompt_tokens = sum(len(p) for p in prep.prompts)
        cached = sum(choices[i * n].cached_tokens for i in range(len(prep.prompts)))
        return usage_dict(prompt_tokens, sum(c.num_tokens for c in choices), cached)


    async def _create(self, request_dict: dict, request_id: str, obs: Observer) -> dict:
        prep = await self._prepare_checked(request_dict, request_id)
        choices = self._new_choices(prep)
        try:
            async with aclosing(self._pump(prep)) as events:
                async for key, out in events:
                    obs.output(key, out)
                    self._record(prep, choices[key], out)
        except ValidationFailure:
            raise
        except Exception as e:  # noqa: BLE001
            log.exception("completion request %s failed", request_id)
            raise ValidationFailure(500, f"internal error ({type(e).__name__})", INCOMPLETE_GENERATION) from None
        body = {"id": prep.response_id, "object": "text_completion", "created": prep.created,
                "model": self.model_name,
                "choices": [{"index": c.index, "text": c.echo_text + "".join(c.parts),
                             "logprobs": self._lp_since(c, 0) if prep.req.logprobs is not None else None,
                             "finish_reason": finish_reason_of(c.engine_finish)} for c in choices],
                "usage": self._usage(prep, choices)}
        if benchmark_enabled(self.options) and choices:
            body["prefill_time"] = round(choices[0].prefill_ms or 0)
            body["decode_time_arr"] = [round(x) for x in choices[0].decode_ms]
        return body

    def _chunk(self, prep: _CPrepared, c: _CChoice, text: str, finish=None, logprobs=None, extra=None) -> bytes:
        obj = {"id": prep.response_id, "object": "text_completion", "created": prep.created,
               "model": self.model_name,
               "choices": [{"index": c.index, "text": text, "logprobs": logprobs, "finish_reason": finish}]}
        if extra:
            obj.update(extra)
        return sse(obj)

    async def _stream(self, request_dict: dict, request_id: str, obs: Observer) -> AsyncIterator[bytes]:
        """SSE of text_completion chunks then `[DONE]`; errors as for ChatServing.stream."""
        prep = await self._prepare_checked(request_dict, request_id)
        choices = self._new_choices(prep)
        want_lp = prep.req.logprobs is not None
        async with aclosing(self._pump(prep)) as events:
            async for key, out in events:
                obs.output(key, out)
                c = choices[key]
                lp_start = len(c.lp_tokens)
                text = self._record(prep, c, out)
                if not c.started:
                    c.started = True
                    text = c.echo_text + text
                lp = self._lp_since(c, lp_start) if want_lp else None
                if out.finished:
                    c.done = True
                    extra = None
                    if key == 0 and benchmark_enabled(self.options):
                        extra = {"prefill_time": round(c.prefill_ms or 0),
                                 "decode_time_arr": [round(x) for x in c.decode_ms]}
                    yield self._chunk(prep, c, text, finish=finish_reason_of(c.engine_finish), logprobs=lp,
                                      extra=extra)
                elif text or (lp and lp["tokens"]):
                    yield self._chunk(prep, c, text, logprobs=lp)
        for c in choices:
            if not c.done:
                c.done = True
                yield self._chunk(prep, c, "" if c.started else c.echo_text,
                                  finish=finish_reason_of(c.engine_finish))
        obs.usage = usage = self._usage(prep, choices)
        if prep.req.include_usage:
            yield sse({"id": prep.response_id, "object": "text_completion", "created": prep.created,
                       "model": self.model_name, "choices": [], "usage": usage})
        yield DONE
