#!/usr/bin/env python3
"""Writes docs/openapi.yaml (OpenAPI 3.0.3) from the code: request and response schemas come from the pydantic
models of mindie_like.protocol, the paths from the route table below, which tests/unit/server/test_openapi.py
compares with the routes the daemon really registers.

    python tools/gen_openapi.py            # rewrite docs/openapi.yaml
    python tools/gen_openapi.py --check    # exit 1 when docs/openapi.yaml differs from what the code gives

Every path item carries `x-mindie-plane` (business | management | metrics): the plane, hence the port, that
serves it. The MindIE compatibility routes (TGI, vLLM, MindIE native, Triton: mindie_like/server/compat.py) are
here too: their requests are the models of mindie_like.protocol.compat, their answers the `_Closed` models below.
tests/e2e/test_openapi_fuzz.py fuzzes the daemon with this file; tests/e2e/test_compat_routes.py validates every
compat answer against it.
"""
from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mindie_like import __version__  # noqa: E402
from mindie_like.protocol import anthropic as an  # noqa: E402
from mindie_like.protocol import compat as cp  # noqa: E402
from mindie_like.protocol import openai_responses as orr  # noqa: E402
from mindie_like.protocol import requests as rq  # noqa: E402
from mindie_like.protocol import responses as rs  # noqa: E402

OUTPUT = REPO / "docs" / "openapi.yaml"
REF = "#/components/schemas/{model}"


# -- response shapes the routes build as plain dicts (server/routes.py); the fuzz test checks the daemon's answers
class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ModelCard(_Open):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str
    max_model_len: int


class ModelList(_Open):
    object: Literal["list"]
    data: list[ModelCard]


class ServiceStatus(_Open):
    roleStatus: Literal["RoleReady", "RoleUnknown"]
    currentRole: str


class ResourceStatus(_Open):
    availSlotsNum: int
    availBlockNum: int
    waitingRequestNum: int
    runningRequestNum: int
    swappedRequestNum: int
    freeNpuBlockNums: int
    freeCpuBlockNums: int
    totalNpuBlockNums: int
    totalCpuBlockNums: int


class StatusResponse(_Open):
    service: ServiceStatus
    resource: ResourceStatus


class InfoResponse(_Open):
    model_id: str
    model_type: str
    model_dtype: str
    model_device_type: str
    max_input_length: int
    max_total_tokens: int
    max_batch_size: int
    max_iter_times: int
    world_size: int
    engine_loaded: bool
    version: str
    router: str


class EffectiveConfig(_Open):
    """The config with every default filled in (see the config reference)."""
    Version: Optional[str] = None
    ServerConfig: dict[str, Any]
    BackendConfig: dict[str, Any]
    LogConfig: dict[str, Any]


# -- the compat routes' answers, as server/compat.py builds them (dicts): closed, every field the server sends ------
class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


def absent_unless(when: str):
    """A field the server leaves out (rather than sending null) unless `when`."""
    return Field(None, description=f"present {when}", json_schema_extra=lambda schema: schema.pop("default", None))


def always_null(json_type: str, why: str) -> Any:
    """A field always sent as null; `json_type` is what MindIE sends there when it measures it."""
    return Annotated[None, WithJsonSchema({"type": json_type, "nullable": True, "enum": [None], "description": why})]


FinishReason = Literal["length", "eos_token", "stop_sequence", "abort"]
Milliseconds = Annotated[Optional[int], Field(ge=0)]


class TgiToken(_Closed):
    id: int
    text: str = Field(description="the text this token released (the concatenated texts are the generated text)")
    logprob: float = Field(le=0, description="the sampled token's log-probability under the model")
    special: bool


class TgiPrefillToken(_Closed):
    id: int
    text: str
    logprob: always_null("number", "prompt tokens have no log-probability here")


class TgiStreamDetails(_Closed):
    finish_reason: FinishReason
    generated_tokens: int = Field(ge=0, description="the end-of-sequence token included")
    seed: int = Field(ge=0, description="the seed used")
    prompt_tokens: int = Field(ge=1, description="prompt tokens sent to the engine (after `truncate`)")


class TgiDetails(TgiStreamDetails):
    prefill: list[TgiPrefillToken] = Field(description="the prompt tokens with decoder_input_details, else []")
    tokens: list[TgiToken] = Field(description="one per generated token")


class TgiResponse(_Closed):
    generated_text: str = Field(description="the generated text; with return_full_text, the prompt followed by it")
    details: TgiDetails = absent_unless("with parameters.details or parameters.decoder_input_details")


class TgiStreamEvent(_Closed):
    token: Optional[TgiToken] = Field(description="null only on the last event of a request stopped by stopInfer")
    generated_text: Optional[str] = Field(description="set on the last event only")
    details: Optional[TgiStreamDetails] = Field(description="set on the last event with parameters.details")


class VllmResponse(_Closed):
    text: list[str] = Field(min_length=1, max_length=1, description="[prompt + generated text]")


class VllmStreamChunk(_Closed):
    text: list[str] = Field(min_length=1, max_length=1, description="[one generated token's text]")


class InferDetails(_Closed):
    finish_reason: FinishReason
    generated_tokens: int = Field(ge=0)
    generated_token_ids: list[int] = Field(description="one per generated token")
    seed: int = Field(ge=0)


class InferResponse(_Closed):
    generated_text: str
    details: InferDetails = absent_unless("with parameters.details")


class InferStreamToken(_Closed):
    id: int
    text: str


class InferStreamEvent(_Closed):
    prefill_time: Milliseconds = Field(description="ms from arrival to the first token: the first event only")
    decode_time: Milliseconds = Field(description="ms of the engine step that produced the token: later events "
                                                  "(the first token of a step only)")
    token: Optional[InferStreamToken] = Field(description="null only on the last event of a stopped request")
    generated_text: str = absent_unless("on the last event")
    details: InferDetails = absent_unless("on the last event with parameters.details")


class TokenizerResponse(_Closed):
    token_number: int = Field(ge=0, description="tokens the generation routes would send for the text")
    tokens: list[str] = Field(description="each token's text; [] with do_decode false")


class TritonStreamDetails(_Closed):
    generated_tokens: int = Field(ge=0, description="tokens generated so far")
    batch_size: always_null("integer", "the engine does not record per-request batch sizes")
    queue_wait_time: always_null("integer", "not measured")


class TritonDetails(TritonStreamDetails):
    finish_reason: FinishReason
    first_token_cost: Milliseconds = Field(description="ms from arrival to the first token; null when the request "
                                                       "was stopped before it")
    decode_cost: int = Field(ge=0, description="ms spent in decode steps")


class TritonResponse(_Closed):
    id: str = Field(description="the request's `id`, else the generated request id (X-Request-Id)")
    model_name: str
    model_version: always_null("string", "models have no versions here")
    text_output: str
    details: TritonDetails = absent_unless("with parameters.details")


class TritonStreamEvent(_Closed):
    id: str
    model_name: str
    model_version: always_null("string", "models have no versions here")
    text_output: str = Field(description="this token's text")
    details: Union[TritonStreamDetails, TritonDetails] = absent_unless(
        "with parameters.details; the last event's is the full TritonDetails")
    prefill_time: Milliseconds = absent_unless("with parameters.details (as /infer's)")
    decode_time: Milliseconds = absent_unless("with parameters.details (as /infer's)")


class TritonTensor(_Closed):
    name: str
    datatype: str
    shape: list[int]


class TritonModelMetadata(_Closed):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TritonTensor]
    outputs: list[TritonTensor]


class TritonModelConfig(_Closed):
    """The loaded ModelDeployConfig / ModelConfig / ScheduleConfig values."""
    name: str
    model_type: str = Field(description="of the weights")
    backend_type: Literal["atb", "torch"]
    world_size: int = Field(ge=1)
    max_seq_len: int = Field(ge=1)
    max_input_token_len: int = Field(ge=1)
    truncation: Literal[-1, 0, 1] = Field(description="0: refuse long prompts; -1: keep the tail; 1: keep the head")
    max_iter_times: int = Field(ge=1)
    max_batch_size: int = Field(ge=1)
    cache_block_size: int = Field(ge=1)
    npu_mem_size: float
    cpu_mem_size: float
    dtype: str
    device: str


SCHEMA_MODELS = [rq.ChatCompletionRequest, rq.CompletionRequest, rs.ChatCompletionResponse, rs.CompletionResponse,
                 rs.ChatCompletionChunk, rs.ErrorBody, ModelList, StatusResponse, InfoResponse, EffectiveConfig,
                 cp.TgiRequest, cp.VllmRequest, cp.InferRequest, cp.TokenizerRequest, cp.TritonRequest,
                 cp.StopInferRequest, TgiResponse, TgiStreamEvent, VllmResponse, VllmStreamChunk, InferResponse,
                 InferStreamEvent, TokenizerResponse, TritonResponse, TritonStreamEvent, TritonModelMetadata,
                 TritonModelConfig,
                 orr.ResponsesRequest, orr.ResponseObject, orr.ResponseDeleted, orr.OpenAIError,
                 an.MessagesRequest, an.CountTokensRequest, an.MessageResponse, an.TokenCount, an.AnthropicError]
REQUEST_MODULES = (rq.__name__, cp.__name__, orr.__name__, an.__name__)


# -- JSON Schema 2020-12 (pydantic) → OpenAPI 3.0 schema objects --------------------------------------------------
def to_openapi30(node: Any) -> Any:
    """`anyOf [X, null]` → X with `nullable`, `const` → one-value `enum`, numeric exclusive bounds → 3.0's boolean
    form; `title`s are dropped (they only repeat the property names)."""
    if isinstance(node, list):
        return [to_openapi30(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_openapi30(v) for k, v in node.items() if k != "title" or not isinstance(v, str)}
    if "properties" in node:   # a property may be called "title": keep those
        out["properties"] = {k: to_openapi30(v) for k, v in node["properties"].items()}
    if "const" in out:
        out["enum"] = [out.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), (int, float)) and not isinstance(out.get(bound), bool):
            out[plain] = out.pop(bound)
            out[bound] = True
    if "$ref" in out and len(out) > 1:      # a $ref cannot have siblings in 3.0 either
        out = {"allOf": [{"$ref": out.pop("$ref")}], **out}
    members = out.get("anyOf")
    if members and {"type": "null"} in members:
        rest = [m for m in members if m != {"type": "null"}]
        del out["anyOf"]
        if len(rest) == 1 and "$ref" not in rest[0]:
            out = {**rest[0], **out}
        elif len(rest) == 1:            # a $ref cannot have siblings in 3.0: wrap it
            out["allOf"] = rest
        else:
            out["anyOf"] = rest
        out["nullable"] = True
        if out.get("default", 0) is None:
            del out["default"]
    return out


def component_schemas() -> dict:
    schemas: dict = {}
    for model in SCHEMA_MODELS:
        mode = "validation" if model.__module__ in REQUEST_MODULES else "serialization"
        js = model.model_json_schema(ref_template=REF, mode=mode)
        for name, sub in js.pop("$defs", {}).items():
            sub = to_openapi30(sub)
            assert schemas.setdefault(name, sub) == sub, f"two different schemas are called {name}"
        top = to_openapi30(js)
        assert schemas.setdefault(model.__name__, top) == top, f"two different schemas are called {model.__name__}"
    return dict(sorted(schemas.items()))


# -- paths ------------------------------------------------------------------------------------------------------
def _ref(name: str) -> dict:
    return {"$ref": REF.format(model=name)}


def _json(name: str) -> dict:
    return {"application/json": {"schema": _ref(name)}}


ERROR_DESCRIPTIONS = {
    404: "Unknown route or model (MindIE's error body)",
    405: "Method not allowed on this route",
    413: "The body is larger than ServerConfig.maxRequestLength MB",
    422: "Input Validation Error: not JSON, JSON too deep (maxJsonDepth), or a parameter out of range",
    424: "Generation Error: the engine refused or failed the request",
    500: "Incomplete Generation: timeout (tokenTimeout / e2eTimeout) or internal error",
    503: "Service Unavailable: stopping, no engine, or over the connection limit (maxLinkNum)",
}


def _errors(*codes: int) -> dict:
    return {str(c): {"description": ERROR_DESCRIPTIONS[c], "content": _json("ErrorBody")} for c in codes}


def _sse_event(chunk: str) -> dict:
    """One server-sent event as schemathesis parses it; `data` is the JSON text of a chunk (`chunk` schema), then
    `[DONE]`."""
    return {"type": "object", "required": ["data"],
            "properties": {"event": {"type": "string"}, "id": {"type": "string"},
                           "data": {"type": "string", "description": f"JSON of a {chunk}, an error body, or [DONE]"}}}


def _generation(summary: str, request: str, response: str, chunk: str) -> dict:
    return {"post": {
        "summary": summary,
        "requestBody": {"required": True, "content": _json(request)},
        "responses": {
            "200": {"description": f"The answer; with `stream: true` server-sent events, each `data:` the JSON of a "
                                   f"{chunk}, ending in `data: [DONE]` (an error after the start is one "
                                   f"`data: {{\"error\": ...}}` event)",
                    "content": {**_json(response), "text/event-stream": {"schema": _sse_event(chunk)}}},
            **_errors(405, 413, 422, 424, 500, 503)}}}


COMPAT_HEADERS = {
    "X-Request-Id": {"description": "The request id: the handle stopInfer takes when the request gave no Triton "
                                    "`id`", "schema": {"type": "string"}},
    "Warning": {"description": "Sent when `parameters.watermark` is true, which is accepted but not supported",
                "schema": {"type": "string"}},
}


def _compat_sse(event: str) -> dict:
    """A compat stream: one event per generated token, no `[DONE]`; an error after the start is one last
    `data: {"error", "error_type"}` event. `contentSchema` lets schemathesis check each event's JSON."""
    data = {"type": "string", "contentMediaType": "application/json",
            "contentSchema": {"anyOf": [_ref(event), _ref("ErrorBody")]},
            "description": f"the JSON of a {event} (one event per generated token; no [DONE]), or of an error body"}
    return {"text/event-stream": {"schema": {"type": "object", "required": ["data"], "properties": {
        "event": {"type": "string"}, "id": {"type": "string"}, "data": data}}}}


def _nul_json(chunk: str) -> dict:
    return {"text/plain": {"schema": {"type": "string", "description": f"per generated token the JSON of a {chunk} "
                                      f"followed by a NUL byte; an error after the start is one error body and a "
                                      f"NUL"}}}


def _compat_generation(summary: str, request: dict, ok: str, content: dict, *errors: int) -> dict:
    """A generating compat route; `request` is its requestBody content, `content` the 200's."""
    return {"post": {
        "summary": summary,
        "requestBody": {"required": True, "content": request},
        "responses": {"200": {"description": ok, "headers": {name: {"$ref": f"#/components/headers/{name}"}
                                                             for name in COMPAT_HEADERS},
                              "content": content},
                      **_errors(*sorted({405, 413, 422, 424, 500, 503, *errors}))}}}


API_ERRORS = {400: "Invalid request: not JSON, too deep, a parameter out of range or not supported",
              404: "Unknown model, or no stored response with that id", 405: "Method not allowed on this route",
              413: "The body is larger than ServerConfig.maxRequestLength MB",
              424: "The engine refused or failed the request",
              500: "Timeout (tokenTimeout / e2eTimeout) or internal error",
              503: "Stopping, no engine, or over the connection limit (maxLinkNum)"}


def _api_errors(body: str, *codes: int) -> dict:
    """Errors of the Responses / Messages routes: their API's own body."""
    return {str(c): {"description": API_ERRORS[c], "content": _json(body)} for c in codes}


def _typed_sse(what: str) -> dict:
    """Server-sent events with an `event:` line naming each event's type; `data` is the event's JSON."""
    return {"text/event-stream": {"schema": {"type": "object", "required": ["data"], "properties": {
        "event": {"type": "string", "description": "the event's type"}, "id": {"type": "string"},
        "data": {"type": "string", "description": f"JSON of one {what} event (its `type` repeats the event line)"}}}}}


def _api_generation(summary: str, request: str, response: str, events: str, error: str, *codes: int) -> dict:
    return {"post": {
        "summary": summary,
        "requestBody": {"required": True, "content": _json(request)},
        "responses": {"200": {"description": f"The answer; with `stream: true` {events} server-sent events",
                              "content": {**_json(response), **_typed_sse(events)}},
                      **_api_errors(error, *codes)}}}


def _get(summary: str, ok: dict, *errors: int) -> dict:
    return {"get": {"summary": summary, "responses": {"200": ok, **_errors(405, *errors)}}}


def _empty(description: str) -> dict:
    return {"description": description}


def paths() -> dict:
    model_param = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"},
                   "description": "The served model's name (ModelConfig[0].modelName); another name: 404"}
    triton = {"parameters": [model_param]}
    business = {
        "/v1/chat/completions": _generation("OpenAI chat completion (tools, streaming, reasoning)",
                                            "ChatCompletionRequest", "ChatCompletionResponse", "ChatCompletionChunk"),
        "/v1/completions": _generation("OpenAI text completion", "CompletionRequest", "CompletionResponse",
                                       "CompletionResponse (one choice's new text)"),
        "/v1/models": _get("The served model", {"description": "One model card", "content": _json("ModelList")},
                           503),
        "/v1/models/{model}": {"parameters": [model_param],
                               **_get("One model card", {"description": "The model card",
                                                         "content": _json("ModelCard")}, 404, 503)},
        # -- OpenAI's Responses API and Anthropic's Messages API (server/responses.py, server/anthropic.py)
        "/v1/responses": _api_generation(
            "OpenAI Responses API: text, function tools, reasoning items, structured output; stored answers "
            "continue with previous_response_id", "ResponsesRequest", "ResponseObject", "Responses API",
            "OpenAIError", 400, 404, 405, 413, 424, 500, 503),
        "/v1/responses/{response_id}": {
            "parameters": [{"name": "response_id", "in": "path", "required": True, "schema": {"type": "string"},
                            "description": "The id of a stored response (the last ServerConfig.responsesStoreSize)"}],
            "get": {"summary": "A stored response",
                    "responses": {"200": {"description": "The response object", "content": _json("ResponseObject")},
                                  **_api_errors("OpenAIError", 404, 405, 503)}},
            "delete": {"summary": "Forget a stored response",
                       "responses": {"200": {"description": "Deleted", "content": _json("ResponseDeleted")},
                                     **_api_errors("OpenAIError", 404, 405, 503)}}},
        "/v1/messages": _api_generation(
            "Anthropic Messages API: text, tool_use / tool_result, thinking blocks with signatures",
            "MessagesRequest", "MessageResponse", "Messages API", "AnthropicError", 400, 404, 405, 413, 424, 500,
            503),
        "/v1/messages/count_tokens": {"post": {
            "summary": "The prompt tokens a Messages request would send (template and tools included)",
            "requestBody": {"required": True, "content": _json("CountTokensRequest")},
            "responses": {"200": {"description": "The count", "content": _json("TokenCount")},
                          **_api_errors("AnthropicError", 400, 404, 405, 413, 500, 503)}}},
        # -- MindIE's compatibility routes (server/compat.py); field by field in docs/api.md
        "/generate": _compat_generation(
            "TGI generate (a body with `inputs`) or vLLM generate (a body with `prompt`, and no `inputs`)",
            {"application/json": {"schema": {"anyOf": [_ref("TgiRequest"), _ref("VllmRequest")]}}},
            "TGI: a TgiResponse. vLLM: a VllmResponse, or with `stream: true` one VllmStreamChunk per generated "
            "token, each followed by a NUL byte",
            {"application/json": {"schema": {"oneOf": [_ref("TgiResponse"), _ref("VllmResponse")]}},
             **_nul_json("VllmStreamChunk")}),
        "/generate_stream": _compat_generation(
            "TGI streaming generate", _json("TgiRequest"),
            "Server-sent events, one TgiStreamEvent per generated token; the last has generated_text",
            _compat_sse("TgiStreamEvent")),
        "/": _compat_generation(
            "TGI generate; streams when the body has `stream: true`", _json("TgiRequest"),
            "A one-element array of TgiResponse; with `stream: true` TgiStreamEvent server-sent events",
            {"application/json": {"schema": {"type": "array", "minItems": 1, "maxItems": 1,
                                             "items": _ref("TgiResponse")}},
             **_compat_sse("TgiStreamEvent")}),
        "/infer": _compat_generation(
            "MindIE native generate; streams when the body has `stream: true`", _json("InferRequest"),
            "An InferResponse; with `stream: true` InferStreamEvent server-sent events, one per generated token",
            {**_json("InferResponse"), **_compat_sse("InferStreamEvent")}),
        "/v1/tokenizer": {"post": {
            "summary": "Count (and list) the tokens the generation routes would send for a text",
            "requestBody": {"required": True, "content": _json("TokenizerRequest")},
            "responses": {"200": {"description": "The token count", "content": _json("TokenizerResponse")},
                          **_errors(405, 413, 422, 503)}}},
        "/v2/models/{model}": {**triton, **_get(
            "Triton model metadata", {"description": "Model metadata", "content": _json("TritonModelMetadata")},
            404)},
        "/v2/models/{model}/config": {**triton, **_get(
            "The loaded model configuration",
            {"description": "Model configuration", "content": _json("TritonModelConfig")}, 404)},
        "/v2/models/{model}/ready": {**triton, "get": {
            "summary": "Model readiness (empty body)",
            "responses": {"200": _empty("Ready"), "503": _empty("Stopping"), **_errors(404, 405)}}},
        "/v2/models/{model}/generate": {**triton, **_compat_generation(
            "Triton text generate", _json("TritonRequest"), "The generated text", _json("TritonResponse"), 404)},
        "/v2/models/{model}/generate_stream": {**triton, **_compat_generation(
            "Triton streaming text generate", _json("TritonRequest"),
            "Server-sent events, one TritonStreamEvent per generated token", _compat_sse("TritonStreamEvent"), 404)},
        # -- for routers in front of several daemons (server/router_endpoints.py; docs/deployment.md)
        "/v1/loads": _get("SGLang's load report, polled by the SGLang Model Gateway",
                          {"description": "One entry (this daemon is one data-parallel rank)", "content": {
                              "application/json": {"schema": {"type": "object", "properties": {"loads": {
                                  "type": "array", "items": {"type": "object", "properties": {
                                      "dp_rank": {"type": "integer"}, "num_running_reqs": {"type": "integer"},
                                      "num_waiting_reqs": {"type": "integer"},
                                      "num_used_tokens": {"type": "integer"},
                                      "max_total_num_tokens": {"type": "integer"},
                                      "token_usage": {"type": "number", "minimum": 0, "maximum": 1},
                                      "worker_generation": {"type": "string"}}}}}}}}}),
        "/get_load": _get("SGLang's older load report (sglang-router 0.3.x polls it)",
                          {"description": "One entry", "content": {"application/json": {"schema": {
                              "type": "array", "items": {"type": "object", "properties": {
                                  "dp_rank": {"type": "integer"}, "num_reqs": {"type": "integer"},
                                  "num_waiting_reqs": {"type": "integer"},
                                  "num_tokens": {"type": "integer"}}}}}}}),
        "/v2/models/{model}/stopInfer": {**triton, "post": {
            "summary": "Abort a running compat request by its id (its KV blocks are freed before the answer); the "
                       "request ends normally with finish_reason abort",
            "requestBody": {"required": True, "content": _json("StopInferRequest")},
            "responses": {"200": {"description": "Stopped; the request body is echoed",
                                  "content": _json("StopInferRequest")},
                          "404": {"description": "No running request has that id, or an unknown model",
                                  "content": _json("ErrorBody")},
                          **_errors(405, 413, 422, 503)}}},
    }
    management = {
        "/health": {"get": {"summary": "Liveness of the service (empty body); the business plane answers it too, "
                                       "for routers (503 there also while no engine serves)",
                            "responses": {"200": _empty("Serving"), "503": _empty("Stopping"),
                                          **_errors(405)}}},
        "/v2/health/live": {"get": {"summary": "KServe liveness (empty body)",
                                    "responses": {"200": _empty("The process is up"), **_errors(405)}}},
        "/v2/health/ready": {"get": {"summary": "KServe readiness (empty body)",
                                     "responses": {"200": _empty("Ready"), "503": _empty("Not ready or stopping"),
                                                   **_errors(405)}}},
        "/v1/status": _get("MindIE status: role and KV-cache resources",
                           {"description": "Role and resources", "content": _json("StatusResponse")}),
        "/v1/config": _get("The effective config, every default filled in",
                           {"description": "The config", "content": _json("EffectiveConfig")}),
        "/info": _get("Model and engine facts (TGI-style /info)",
                      {"description": "Model and engine facts", "content": _json("InfoResponse")}),
    }
    metrics = {
        "/metrics": _get("Prometheus metrics (text format 0.0.4)",
                         {"description": "Prometheus text", "content": {"text/plain": {"schema": {"type": "string"}}}}),
    }
    out = {}
    for plane, group in (("business", business), ("management", management), ("metrics", metrics)):
        for path, item in group.items():
            out[path] = {"x-mindie-plane": plane, **item}
    return out


def build_spec() -> dict:
    return {
        "openapi": "3.0.3",
        "info": {"title": "mindie_like", "version": __version__,
                 "description": "A MindIE-style serving daemon. Three planes, each on its own port (they may "
                                "coincide): business (ServerConfig.port), management (managementPort) and metrics "
                                "(metricsPort); `x-mindie-plane` on each path says which. Every plane speaks HTTPS "
                                "with mutual TLS when ServerConfig.httpsEnabled (the default). Errors carry MindIE's "
                                "body `{\"error\": str, \"error_type\": str}`. Generated by tools/gen_openapi.py: do "
                                "not edit by hand."},
        "servers": [{"url": "https://127.0.0.1:1025", "description": "business plane (default port)"},
                    {"url": "https://127.0.0.1:1026", "description": "management plane (default port)"},
                    {"url": "https://127.0.0.1:1027", "description": "metrics plane (default port)"}],
        "paths": paths(),
        "components": {"headers": COMPAT_HEADERS, "schemas": component_schemas()},
    }


def render() -> str:
    return "# Generated by tools/gen_openapi.py from the code: do not edit by hand.\n" + yaml.safe_dump(
        build_spec(), sort_keys=False, allow_unicode=True, width=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="fail when docs/openapi.yaml is out of date")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), text.splitlines(True),
                                                       str(OUTPUT), "generated"))
            print(f"{OUTPUT} is out of date: run python tools/gen_openapi.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
