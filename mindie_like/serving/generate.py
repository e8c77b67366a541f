"""The compatibility routes (TGI, vLLM, MindIE native, Triton) without HTTP: one pipeline for all of them.

A route is a `GenerateServing` with a renderer (mindie_like.server.compat holds one per route). The serving object
does what the OpenAI routes do, with the same engine, tokenizer, limits (maxInputTokenLen, maxSeqLen,
maxIterTimes, truncation), generation_config defaults, metrics, token/e2e timeouts and abort-on-disconnect
(ObservedServing and its pump); the renderer only parses the route's body into a `GenerateSpec` and shapes
`TokenEvent`s and the `GenerationResult` into the route's JSON.

Per-token events. The engine streams outputs that carry new token ids and a text delta; the detokenizer may hold
text back (an incomplete UTF-8 sequence, a possible stop string) and one output may carry several ids. The rule:
one `TokenEvent` per generated token id, in order; an output's text delta belongs to its last id (the others get
""), so text held back by the detokenizer arrives with a later token, and the concatenated event texts always
equal the generated text. The last event of a request carries `final` (the GenerationResult); when the engine
ends a request without a new token (only a stopInfer abort does that), that last event has `token_id` None.
"""
from __future__ import annotations

import asyncio
import logging
import random
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional, Protocol

from ..engine.types import RequestOutput, SamplingParams
from ..protocol.compat import GenerateSpec
from ..protocol.errors import INCOMPLETE_GENERATION, ValidationFailure, invalid
from ..chat.tokenizer import ensure_tokenizer
from .common import (Job, ObservedServing, Observer, ServingOptions, fit_prompt, pump, refuse_untokenizable_length,
                     usage_dict)

log = logging.getLogger("mindie_like.serving")

SEED_BITS = 63


# ----------------------------------------------------------------------------------------------- typical_p

class TypicalMask:
    """Locally typical sampling (Meister et al.; transformers' TypicalLogitsWarper) as an engine LogitsMask.

    Keeps the tokens whose surprisal is closest to the distribution's entropy until their probability mass
    reaches `mass`; the rest get -inf. The distribution is the temperature-scaled one, as in transformers (where
    temperature runs before typical_p); the engine applies top-k/top-p after this mask. Tensor methods only: no
    torch import here."""

    def __init__(self, mass: float, temperature: float):
        self.mass = float(mass)
        self.temperature = float(temperature)

    def apply(self, logits) -> None:
        logp = (logits / self.temperature).log_softmax(dim=-1)
        p = logp.exp()
        entropy = -(p.nan_to_num() * logp.nan_to_num()).sum()
        shift = (-logp - entropy).abs()
        order = shift.argsort(stable=True)
        cum = p[order].cumsum(dim=-1)
        keep = int((cum < self.mass).sum().item()) + 1      # the smallest prefix that reaches the mass
        logits[order[keep:]] = float("-inf")

    def accept(self, token_id: int) -> bool:
        return True

    def is_finished(self) -> bool:
        return False


# ----------------------------------------------------------------------------------------------- stopInfer

class InflightRegistry:
    """Running compat requests by their user-facing id (Triton `id`, else the generated request id), for
    POST /v2/models/{model}/stopInfer. `stopped` holds the engine request ids stopped on purpose: the pump treats
    their engine abort as a normal end (finish_reason "abort"), not as an engine failure."""

    def __init__(self):
        self.by_id: dict[str, str] = {}
        self.stopped: set[str] = set()

    def add(self, user_id: str, engine_id: str) -> None:
        if user_id in self.by_id:
            raise invalid(f"id: {user_id!r} is already used by a running request")
        self.by_id[user_id] = engine_id

    def remove(self, user_id: str) -> None:
        engine_id = self.by_id.pop(user_id, None)
        if engine_id is not None:
            self.stopped.discard(engine_id)

    async def stop(self, engine, user_id: str) -> None:
        """Aborts the request; returns once the engine freed its KV blocks. 404 when no such request runs."""
        engine_id = self.by_id.get(user_id)
        if engine_id is None:
            raise ValidationFailure(404, f"RequestId is {user_id} not found.", "Not Found")
        self.stopped.add(engine_id)
        await engine.abort(engine_id)


# ----------------------------------------------------------------------------------------------- results

@dataclass
class GenerationResult:
    """A finished generation, whatever the route."""
    request_id: str                           # the user-facing id (Triton `id` or the generated one)
    text: str                                 # the generated text (stop strings applied)
    token_ids: list[int]
    logprobs: list[Optional[float]]           # per generated token; None when not asked for
    specials: list[bool]                      # per generated token: is it a special token
    token_texts: list[str]                    # per generated token: its event text (see the module doc)
    finish_reason: str                        # "length" | "eos_token" | "stop_sequence" | "abort"
    prompt_ids: list[int]
    seed: int
    first_token_ms: Optional[float] = None    # arrival to first token (the engine's prefill_time)
    decode_ms: list[float] = field(default_factory=list)   # one per decode step

    @property
    def generated_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class TokenEvent:
    request_id: str                           # the user-facing id (as GenerationResult.request_id)
    index: int                                # 0-based position among the generated tokens
    token_id: Optional[int]
    text: str
    logprob: Optional[float]
    special: bool
    prefill_ms: Optional[float] = None        # set on the first token
    decode_ms: Optional[float] = None         # set on later tokens: the step that produced it
    final: Optional[GenerationResult] = None  # set on the last event


class Renderer(Protocol):
    """One route's wire format (implemented in mindie_like.server.compat)."""
    stream_content_type: str

    def parse(self, body: Any) -> GenerateSpec: ...
    def wants_stream(self, body: Any) -> bool: ...
    def response(self, spec: GenerateSpec, result: GenerationResult) -> Any: ...
    def event(self, spec: GenerateSpec, ev: TokenEvent) -> bytes: ...
    def error(self, failure: ValidationFailure) -> bytes: ...


def finish_reason_of(out: RequestOutput) -> str:
    """The engine's finish reason in TGI's (and MindIE's text routes') vocabulary."""
    if out.finish_reason == "length":
        return "length"
    if out.finish_reason == "abort":
        return "abort"
    return "eos_token" if out.stop_reason is None else "stop_sequence"


# ----------------------------------------------------------------------------------------------- serving

@dataclass
class _Prepared:
    spec: GenerateSpec
    user_id: str
    jobs: list[Job]
    seed: int


class _Collector:
    """Turns engine outputs into TokenEvents and accumulates the GenerationResult."""

    def __init__(self, prep: _Prepared, tokenizer, special_ids: frozenset):
        self.prep = prep
        self.tok = tokenizer
        self.special_ids = special_ids
        self.result = GenerationResult(request_id=prep.user_id, text="", token_ids=[], logprobs=[], specials=[],
                                       token_texts=[], finish_reason="length", prompt_ids=prep.jobs[0].prompt_ids,
                                       seed=prep.seed)
        self.parts: list[str] = []

    def events(self, out: RequestOutput) -> list[TokenEvent]:
        r = self.result
        ids = list(out.new_token_ids or [])
        text = out.text_delta or ""
        self.parts.append(text)
        if out.prefill_time_ms is not None and r.first_token_ms is None:
            r.first_token_ms = out.prefill_time_ms
        elif out.decode_time_ms is not None:
            r.decode_ms.append(out.decode_time_ms)
        lps = out.logprobs or []
        evs = []
        for i, tid in enumerate(ids):
            last = i == len(ids) - 1
            lp = float(lps[i].logprob) if i < len(lps) else None
            ev = TokenEvent(r.request_id, index=len(r.token_ids), token_id=tid, text=text if last else "", logprob=lp,
                            special=tid in self.special_ids)
            if i == 0:
                ev.prefill_ms, ev.decode_ms = out.prefill_time_ms, out.decode_time_ms
            r.token_ids.append(tid)
            r.logprobs.append(lp)
            r.specials.append(ev.special)
            r.token_texts.append(ev.text)
            evs.append(ev)
        if out.finished:
            r.finish_reason = finish_reason_of(out)
            r.text = "".join(self.parts)
            if not evs:        # ended without a new token (stopInfer): a token-less last event
                evs.append(TokenEvent(r.request_id, index=len(r.token_ids), token_id=None, text=text, logprob=None,
                                      special=False))
            evs[-1].final = r
        return evs


class GenerateServing(ObservedServing):
    """One compat route over the shared engine: validation by the renderer, generation here."""

    def __init__(self, engine, tokenizer, model_name: str, renderer: Renderer, *,
                 options: Optional[ServingOptions] = None, metrics: Any = None,
                 registry: Optional[InflightRegistry] = None):
        self.engine = engine
        self.tokenizer = ensure_tokenizer(tokenizer)
        self.model_name = model_name
        self.renderer = renderer
        self.options = options or ServingOptions()
        self.metrics = metrics
        self.registry = registry if registry is not None else InflightRegistry()
        self.special_ids = frozenset(getattr(self.tokenizer.hf, "all_special_ids", ()) or ())

    def wants_stream(self, body: Any) -> bool:
        return self.renderer.wants_stream(body)

    # -- preparation
    def _sampling_params(self, spec: GenerateSpec, max_tokens: Optional[int], seed: int) -> SamplingParams:
        d = self.options.default_sampling

        def pick(value, name, fallback):
            return value if value is not None else d.get(name, fallback)

        temperature = 0.0 if spec.do_sample is False else float(pick(spec.temperature, "temperature", 1.0))
        mask = None
        if spec.typical_p is not None and spec.typical_p < 1.0 and temperature > 0:
            mask = TypicalMask(spec.typical_p, temperature)
        if self.tokenizer.vocab_size:
            for i, t in enumerate(spec.stop_token_ids):
                if t >= self.tokenizer.vocab_size:
                    raise invalid(f"stop_token_ids[{i}]: {t} is not in [0, {self.tokenizer.vocab_size - 1}]")
        return SamplingParams(
            max_tokens=max_tokens, temperature=temperature,
            top_k=int(pick(spec.top_k, "top_k", -1)) or -1, top_p=float(pick(spec.top_p, "top_p", 1.0)),
            min_p=float(d.get("min_p", 0.0)),
            repetition_penalty=float(pick(spec.repetition_penalty, "repetition_penalty", 1.0)),
            presence_penalty=float(pick(spec.presence_penalty, "presence_penalty", 0.0)),
            frequency_penalty=float(pick(spec.frequency_penalty, "frequency_penalty", 0.0)),
            seed=seed, stop=list(spec.stop), stop_token_ids=list(spec.stop_token_ids),
            include_stop_str_in_output=spec.include_stop_str_in_output, ignore_eos=spec.ignore_eos,
            skip_special_tokens=spec.skip_special_tokens, logprobs=0, logits_mask=mask)

    def _prepare(self, body: Any, request_id: str) -> _Prepared:
        spec = self.renderer.parse(body)
        if spec.truncate is None:
            refuse_untokenizable_length(len(spec.prompt), self.options, self.tokenizer)
        ids = self.tokenizer.encode(spec.prompt, add_special_tokens=True)
        if spec.truncate is not None and len(ids) > spec.truncate:
            ids = ids[-spec.truncate:]             # TGI's truncate keeps the end of the prompt
        ids, max_tokens = fit_prompt(ids, self.options, spec.max_new_tokens)
        seed = spec.seed if spec.seed is not None else random.getrandbits(SEED_BITS)
        params = self._sampling_params(spec, max_tokens, seed)
        user_id = spec.user_id or request_id
        return _Prepared(spec, user_id, [Job(0, ids, params, request_id)], seed)

    def _pump(self, prep: _Prepared):
        e2e = self.options.e2e_timeout_s
        if prep.spec.timeout_s is not None:
            e2e = min(e2e, prep.spec.timeout_s) if e2e else float(prep.spec.timeout_s)
        return pump(self.engine, prep.jobs, token_timeout=self.options.token_timeout_s, e2e_timeout=e2e,
                    stopped=self.registry.stopped)

    async def _events(self, body: Any, request_id: str, obs: Observer) -> AsyncIterator[tuple[_Prepared, TokenEvent]]:
        try:
            prep = await asyncio.to_thread(self._prepare, body, request_id)   # tokenizing: off the event loop
        except ValidationFailure:
            raise
        except Exception as e:  # noqa: BLE001 - a bug or a broken tokenizer: never a traceback to the client
            log.exception("compat request %s could not be prepared", request_id)
            raise ValidationFailure(500, f"internal error ({type(e).__name__})", INCOMPLETE_GENERATION) from None
        self.registry.add(prep.user_id, request_id)
        collector = _Collector(prep, self.tokenizer, self.special_ids)
        try:
            async with aclosing(self._pump(prep)) as outputs:
                async for key, out in outputs:
                    obs.output(key, out)
                    for ev in collector.events(out):
                        if ev.final is not None:
                            obs.usage = usage_dict(len(ev.final.prompt_ids), ev.final.generated_tokens)
                        yield prep, ev
        finally:
            self.registry.remove(prep.user_id)

    async def _create(self, body: Any, request_id: str, obs: Observer) -> Any:
        async with aclosing(self._events(body, request_id, obs)) as events:
            async for prep, ev in events:
                if ev.final is not None:
                    return self.renderer.response(prep.spec, ev.final)
        raise ValidationFailure(500, "the engine ended the request without a result", INCOMPLETE_GENERATION)

    async def _stream(self, body: Any, request_id: str, obs: Observer) -> AsyncIterator[bytes]:
        async with aclosing(self._events(body, request_id, obs)) as events:
            async for prep, ev in events:
                yield self.renderer.event(prep.spec, ev)

    def _error_chunks(self, failure: ValidationFailure) -> list[bytes]:
        return [self.renderer.error(failure)]

    # -- the other native routes
    def count_tokens(self, text: str) -> list[int]:
        """The prompt ids a generation route would send for `text` (before limits)."""
        return self.tokenizer.encode(text, add_special_tokens=True)

    async def stop(self, user_id: str) -> None:
        await self.registry.stop(self.engine, user_id)
