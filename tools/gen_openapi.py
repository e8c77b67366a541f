#!/usr/bin/env python3
"""Writes docs/openapi.yaml (OpenAPI 3.0.3) from the code: request and response schemas come from the pydantic
models of mindie_like.protocol, the paths from the route table below, which tests/unit/server/test_openapi.py
compares with the routes the daemon really registers.

    python tools/gen_openapi.py            # rewrite docs/openapi.yaml
    python tools/gen_openapi.py --check    # exit 1 when docs/openapi.yaml differs from what the code gives

Every path item carries `x-mindie-plane` (business | management | metrics): the plane, hence the port, that
serves it. More paths (the MindIE compat routes) live in other docs/openapi*.yaml files with the same layout;
the fuzz test (tests/e2e/test_openapi_fuzz.py) runs over every such file.
"""
from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mindie_like import __version__  # noqa: E402
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


SCHEMA_MODELS = [rq.ChatCompletionRequest, rq.CompletionRequest, rs.ChatCompletionResponse, rs.CompletionResponse,
                 rs.ChatCompletionChunk, rs.ErrorBody, ModelList, StatusResponse, InfoResponse, EffectiveConfig]


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
        mode = "validation" if model.__module__ == rq.__name__ else "serialization"
        js = model.model_json_schema(ref_template=REF, mode=mode)
        for name, sub in js.pop("$defs", {}).items():
            schemas[name] = to_openapi30(sub)
        schemas[model.__name__] = to_openapi30(js)
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


def _get(summary: str, ok: dict, *errors: int) -> dict:
    return {"get": {"summary": summary, "responses": {"200": ok, **_errors(405, *errors)}}}


def _empty(description: str) -> dict:
    return {"description": description}


def paths() -> dict:
    model_param = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"},
                   "description": "The served model's name (ModelConfig[0].modelName)"}
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
    }
    management = {
        "/health": {"get": {"summary": "Liveness of the service (empty body)",
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
        "components": {"schemas": component_schemas()},
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
