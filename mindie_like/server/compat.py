"""MindIE's compatibility routes on the business plane: TGI, vLLM, MindIE native and Triton.

Every generating route is a `serving.GenerateServing` (the same engine, tokenizer, limits, metrics, timeouts
and disconnect-abort as /v1/completions) with one renderer below; a renderer is the table of one API's
differences: how its body becomes a GenerateSpec, and how tokens and the result are written back.

    route                              renderer                  stream
    POST /generate  (body has inputs)  TgiRenderer("generate")   never (TGI's /generate)
    POST /generate  (body has prompt)  VllmRenderer              body "stream": JSON objects ending in NUL
    POST /generate_stream              TgiRenderer("stream")     always, SSE
    POST /                             TgiRenderer("root")       body "stream", SSE; else a one-element list
    POST /infer                        InferRenderer             body "stream", SSE
    POST /v2/models/{m}/generate       TritonRenderer(stream=False)
    POST /v2/models/{m}/generate_stream TritonRenderer(stream=True)  SSE
Plus POST /v1/tokenizer, GET /v2/models/{m}, /v2/models/{m}/config, /v2/models/{m}/ready and
POST /v2/models/{m}/stopInfer. Field by field in docs/api.md.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from aiohttp import web

from ..protocol.compat import (GenerateSpec, InferRequest, StopInferRequest, TgiRequest, TokenizerRequest,
                               TritonRequest, VllmRequest, parse_compat, spec_of)
from ..protocol.errors import ValidationFailure, invalid
from ..chat.tokenizer import ensure_tokenizer
from ..serving.common import dumps, sse
from ..serving.generate import GenerateServing, GenerationResult, InflightRegistry, TokenEvent
from .context import Backend, ServingContext
from .errors import ApiError, error_response
from .guard import get_json
from .handler import SSE_TYPE, no_engine_routes, serve_request

NUL_JSON_TYPE = "text/plain; charset=utf-8"
GENERATE_NEEDS = ("`inputs` or `prompt` must be necessary and data type must be string. Additionally, the request "
                  "body must be valid json")
# watermark=true is accepted (MindIE accepts it too) but nothing is watermarked: the answer says so
WATERMARK_WARNING = '299 mindie_like "watermark is not supported: the text is not watermarked"'


def _ms(x: Optional[float]) -> Optional[int]:
    return None if x is None else int(round(x))


def _token_texts(tokenizer, ids: list[int]) -> list[str]:
    return [tokenizer.token_text(t) for t in ids]


# ----------------------------------------------------------------------------------------------- renderers

class TgiRenderer:
    """TGI 0.9.4 as MindIE serves it. mode: "generate" (never streams), "stream" (/generate_stream, always),
    "root" (POST /: streams when the body says so; otherwise a one-element list, as TGI's / does)."""
    stream_content_type = SSE_TYPE

    def __init__(self, mode: str, tokenizer):
        self.mode = mode
        self.tokenizer = tokenizer

    def wants_stream(self, body: Any) -> bool:
        if self.mode == "root":
            return isinstance(body, dict) and body.get("stream") is True
        return self.mode == "stream"

    def parse(self, body: Any) -> GenerateSpec:
        return spec_of(parse_compat(TgiRequest, body), self.wants_stream(body))

    def _text(self, spec: GenerateSpec, r: GenerationResult) -> str:
        return spec.prompt + r.text if spec.return_full_text else r.text

    def response(self, spec: GenerateSpec, r: GenerationResult) -> Any:
        body: dict[str, Any] = {"generated_text": self._text(spec, r)}
        if spec.details or spec.decoder_input_details:
            prefill = []
            if spec.decoder_input_details:
                prefill = [{"id": t, "text": s, "logprob": None}
                           for t, s in zip(r.prompt_ids, _token_texts(self.tokenizer, r.prompt_ids))]
            body["details"] = {
                "finish_reason": r.finish_reason, "generated_tokens": r.generated_tokens, "seed": r.seed,
                "prompt_tokens": len(r.prompt_ids), "prefill": prefill,
                # token texts are the streamed event texts (serving/generate.py): they add up to the text
                "tokens": [{"id": t, "text": s, "logprob": lp, "special": sp} for t, s, lp, sp in
                           zip(r.token_ids, r.token_texts, r.logprobs, r.specials)]}
        return [body] if self.mode == "root" else body

    def event(self, spec: GenerateSpec, ev: TokenEvent) -> bytes:
        token = None if ev.token_id is None else {"id": ev.token_id, "text": ev.text, "logprob": ev.logprob,
                                                  "special": ev.special}
        out: dict[str, Any] = {"token": token, "generated_text": None, "details": None}
        if ev.final is not None:
            r = ev.final
            out["generated_text"] = self._text(spec, r)
            if spec.details:
                out["details"] = {"finish_reason": r.finish_reason, "generated_tokens": r.generated_tokens,
                                  "seed": r.seed, "prompt_tokens": len(r.prompt_ids)}
        return sse(out)

    def error(self, failure: ValidationFailure) -> bytes:
        return sse(failure.to_body())


class VllmRenderer:
    """vLLM 0.2.x's /generate: `{"text": [prompt + generated]}`; streaming: one `{"text": [token text]}` per
    generated token (MindIE's framing: the token's text, not the cumulative text), each followed by a NUL."""
    stream_content_type = NUL_JSON_TYPE

    def __init__(self, model_name: str):
        self.model_name = model_name

    def wants_stream(self, body: Any) -> bool:
        return isinstance(body, dict) and body.get("stream") is True

    def parse(self, body: Any) -> GenerateSpec:
        req = parse_compat(VllmRequest, body)
        if req.model not in (None, "None", self.model_name):     # no LoRA adapters here: only the base model
            raise invalid(f"model: Model not found: {json.dumps(req.model, ensure_ascii=False)}")
        return req.to_spec()

    def response(self, spec: GenerateSpec, r: GenerationResult) -> Any:
        return {"text": [spec.prompt + r.text]}

    def event(self, spec: GenerateSpec, ev: TokenEvent) -> bytes:
        return dumps({"text": [ev.text]}) + b"\0"

    def error(self, failure: ValidationFailure) -> bytes:
        return dumps(failure.to_body()) + b"\0"


class InferRenderer:
    """MindIE's native POST /infer."""
    stream_content_type = SSE_TYPE

    def wants_stream(self, body: Any) -> bool:
        return isinstance(body, dict) and body.get("stream") is True

    def parse(self, body: Any) -> GenerateSpec:
        return parse_compat(InferRequest, body).to_spec()

    @staticmethod
    def _details(r: GenerationResult) -> dict:
        return {"finish_reason": r.finish_reason, "generated_tokens": r.generated_tokens,
                "generated_token_ids": list(r.token_ids), "seed": r.seed}

    def response(self, spec: GenerateSpec, r: GenerationResult) -> Any:
        body: dict[str, Any] = {"generated_text": r.text}
        if spec.details:
            body["details"] = self._details(r)
        return body

    def event(self, spec: GenerateSpec, ev: TokenEvent) -> bytes:
        out: dict[str, Any] = {"prefill_time": _ms(ev.prefill_ms), "decode_time": _ms(ev.decode_ms),
                               "token": None if ev.token_id is None else {"id": ev.token_id, "text": ev.text}}
        if ev.final is not None:
            out["generated_text"] = ev.final.text
            if spec.details:
                out["details"] = self._details(ev.final)
        return sse(out)

    def error(self, failure: ValidationFailure) -> bytes:
        return sse(failure.to_body())


class TritonRenderer:
    """Triton's text generate extension as MindIE serves it."""
    stream_content_type = SSE_TYPE

    def __init__(self, model_name: str, stream: bool):
        self.model_name = model_name
        self.stream = stream

    def wants_stream(self, body: Any) -> bool:
        return self.stream

    def parse(self, body: Any) -> GenerateSpec:
        return spec_of(parse_compat(TritonRequest, body), self.stream)

    def _head(self, request_id: str, text: str) -> dict:
        return {"id": request_id, "model_name": self.model_name, "model_version": None, "text_output": text}

    @staticmethod
    def _details(r: GenerationResult, generated: int, final: bool) -> dict:
        # batch_size and queue_wait_time: the engine does not measure them per request, so they are null
        d: dict[str, Any] = {"generated_tokens": generated, "first_token_cost": _ms(r.first_token_ms),
                             "decode_cost": _ms(sum(r.decode_ms)) if final else None,
                             "batch_size": None, "queue_wait_time": None}
        if final:
            d = {"finish_reason": r.finish_reason, **d}
        return d

    def response(self, spec: GenerateSpec, r: GenerationResult) -> Any:
        body = self._head(r.request_id, r.text)
        if spec.details:
            body["details"] = self._details(r, r.generated_tokens, True)
        return body

    def event(self, spec: GenerateSpec, ev: TokenEvent) -> bytes:
        out = self._head(ev.request_id, ev.text)
        if spec.details:
            generated = ev.index + (ev.token_id is not None)
            if ev.final is not None:
                out["details"] = self._details(ev.final, generated, True)
            else:
                out["details"] = {"generated_tokens": generated, "batch_size": None, "queue_wait_time": None}
            out["prefill_time"], out["decode_time"] = _ms(ev.prefill_ms), _ms(ev.decode_ms)
        return sse(out)

    def error(self, failure: ValidationFailure) -> bytes:
        return sse(failure.to_body())


# ----------------------------------------------------------------------------------------------- handlers

@dataclass
class CompatServings:
    """The daemon's compat serving objects (one per generating route), sharing one stopInfer registry."""
    tgi: GenerateServing
    tgi_stream: GenerateServing
    tgi_root: GenerateServing
    vllm: GenerateServing
    infer: GenerateServing
    triton: GenerateServing
    triton_stream: GenerateServing


def build_compat_servings(backend: Backend, model_name: str, options, metrics) -> CompatServings:
    """One GenerateServing per compat route over the loaded model, with the OpenAI routes' ServingOptions."""
    registry = InflightRegistry()

    def make(renderer) -> GenerateServing:
        return GenerateServing(backend.engine, backend.tokenizer, model_name, renderer, options=options,
                               metrics=metrics, registry=registry)

    tok = ensure_tokenizer(backend.tokenizer)
    return CompatServings(tgi=make(TgiRenderer("generate", tok)), tgi_stream=make(TgiRenderer("stream", tok)),
                          tgi_root=make(TgiRenderer("root", tok)), vllm=make(VllmRenderer(model_name)),
                          infer=make(InferRenderer()),
                          triton=make(TritonRenderer(model_name, False)),
                          triton_stream=make(TritonRenderer(model_name, True)))


def _watermark_requested(body: Any) -> bool:
    params = body.get("parameters") if isinstance(body, dict) else None
    return isinstance(params, dict) and params.get("watermark") is True


async def _serve(request: web.Request, serving: GenerateServing, body: Any) -> web.StreamResponse:
    headers = {"Warning": WATERMARK_WARNING} if _watermark_requested(body) else None
    return await serve_request(request, serving, body, content_type=serving.renderer.stream_content_type,
                               headers=headers)


def _check_model(ctx: ServingContext, request: web.Request) -> None:
    name = request.match_info["model"]
    if name != ctx.model_name:
        raise ApiError(404, f"Model {name} not found.")


def _triton_model(ctx: ServingContext) -> dict:
    """GET /v2/models/{m}: Triton's model metadata for a text-in, text-out model."""
    return {"name": ctx.model_name, "versions": [], "platform": "mindie_like",
            "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1]}],
            "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [1]}]}


def _triton_config(ctx: ServingContext) -> dict:
    """GET /v2/models/{m}/config: the loaded ModelDeployConfig / ModelConfig / ScheduleConfig values. No file
    system paths: business clients get the model's name, not where the server keeps it."""
    cfg = ctx.config
    m, ec = cfg.model, ctx.engine_config
    return {"name": ctx.model_name, "model_type": ctx.backend.model_type, "backend_type": m.backendType,
            "world_size": m.worldSize,
            "max_seq_len": cfg.deploy.maxSeqLen, "max_input_token_len": cfg.deploy.maxInputTokenLen,
            "truncation": cfg.deploy.truncation, "max_iter_times": cfg.schedule.maxIterTimes,
            "max_batch_size": cfg.schedule.maxBatchSize, "cache_block_size": cfg.schedule.cacheBlockSize,
            "npu_mem_size": m.npuMemSize, "cpu_mem_size": m.cpuMemSize, "dtype": ec.dtype, "device": ec.device}


def _add_triton_model_routes(app: web.Application, ctx: ServingContext) -> None:
    """The Triton model routes read the config only: served with or without an engine."""
    async def model(request: web.Request) -> web.Response:
        _check_model(ctx, request)
        return web.json_response(_triton_model(ctx))

    async def model_config(request: web.Request) -> web.Response:
        _check_model(ctx, request)
        return web.json_response(_triton_config(ctx))

    async def model_ready(request: web.Request) -> web.Response:
        _check_model(ctx, request)
        return web.Response(status=200 if ctx.ready else 503)

    app.router.add_get("/v2/models/{model}", model)
    app.router.add_get("/v2/models/{model}/config", model_config)
    app.router.add_get("/v2/models/{model}/ready", model_ready)


GENERATING_PATHS = ("/generate", "/generate_stream", "/", "/infer", "/v1/tokenizer", "/v2/models/{model}/generate",
                    "/v2/models/{model}/generate_stream", "/v2/models/{model}/stopInfer")


def add_compat_routes(app: web.Application, ctx: ServingContext) -> None:
    _add_triton_model_routes(app, ctx)
    if ctx.servings is None:
        no_engine_routes(app, GENERATING_PATHS)
        return
    s: CompatServings = ctx.servings.compat

    async def generate(request: web.Request) -> web.StreamResponse:
        body = await get_json(request)
        if isinstance(body, dict) and "inputs" in body:
            return await _serve(request, s.tgi, body)
        if isinstance(body, dict) and "prompt" in body:
            return await _serve(request, s.vllm, body)
        return error_response(422, GENERATE_NEEDS)

    def route(serving: GenerateServing, triton: bool = False):
        async def handler(request: web.Request) -> web.StreamResponse:
            if triton:
                _check_model(ctx, request)
            return await _serve(request, serving, await get_json(request))
        return handler

    async def tokenizer(request: web.Request) -> web.Response:
        try:
            req = parse_compat(TokenizerRequest, await get_json(request))
        except ValidationFailure as e:
            return error_response(e.status, e.message, e.error_type)
        ids = s.infer.count_tokens(req.inputs)
        tokens = _token_texts(s.infer.tokenizer, ids) if req.do_decode else []
        return web.json_response({"token_number": len(ids), "tokens": tokens},
                                 dumps=lambda o: json.dumps(o, ensure_ascii=False))

    async def stop_infer(request: web.Request) -> web.Response:
        _check_model(ctx, request)
        body = await get_json(request)
        try:
            req = parse_compat(StopInferRequest, body)
            await s.triton.stop(req.id)
        except ValidationFailure as e:
            return error_response(e.status, e.message, e.error_type)
        return web.json_response(body)

    app.router.add_post("/generate", generate)
    app.router.add_post("/generate_stream", route(s.tgi_stream))
    app.router.add_post("/", route(s.tgi_root))
    app.router.add_post("/infer", route(s.infer))
    app.router.add_post("/v1/tokenizer", tokenizer)
    app.router.add_post("/v2/models/{model}/generate", route(s.triton, triton=True))
    app.router.add_post("/v2/models/{model}/generate_stream", route(s.triton_stream, triton=True))
    app.router.add_post("/v2/models/{model}/stopInfer", stop_infer)
