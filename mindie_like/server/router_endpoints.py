"""What a router in front of several daemons reads from each one (the SGLang Model Gateway behind
bin/ms_coordinator, or a Kubernetes Gateway API inference extension):

    GET /health      business plane: 200 while serving, 503 while not (the gateway's registration and health probe;
                     the management plane's /health keeps its own meaning)
    GET /v1/loads    SGLang's load report, the shape the gateway's load policies poll:
                     {"loads": [{"dp_rank", "num_running_reqs", "num_waiting_reqs", "num_used_tokens",
                                 "max_total_num_tokens", "token_usage", "worker_generation"}]}
    GET /get_load    the older SGLang form of the same numbers: [{"dp_rank", "num_reqs", "num_waiting_reqs",
                     "num_tokens"}]
/v1/models is served by the model routes. The queue length and KV-cache usage also go out as Prometheus gauges under
the names the Gateway API Inference Extension's model-server protocol reads (vllm:num_requests_waiting,
vllm:num_requests_running, vllm:kv_cache_usage_perc and its older name vllm:gpu_cache_usage_perc), next to
MindIE's own names on /metrics; they are computed from the engine's stats at scrape time.
"""
from __future__ import annotations

import uuid

from aiohttp import web
from prometheus_client.core import GaugeMetricFamily

from .context import ServingContext, get_context
from .routes import json_response

# One id per daemon process: a load report carrying another id comes from a restarted instance.
_GENERATION = uuid.uuid4().hex


def _load_numbers(ctx: ServingContext) -> dict:
    st = ctx.engine_stats()
    total_blocks = int(st.total_blocks)
    used_blocks = max(0, total_blocks - int(st.free_blocks))
    block_size = int(st.block_size or ctx.engine_config.block_size)
    return {"running": int(st.running), "waiting": int(st.waiting),
            "used_tokens": used_blocks * block_size, "total_tokens": total_blocks * block_size,
            "usage": used_blocks / total_blocks if total_blocks > 0 else 0.0}


async def business_health(request: web.Request) -> web.Response:
    ctx = get_context(request)
    serving = ctx.ready and ctx.engine is not None
    return web.Response(status=200 if serving else 503)


async def loads(request: web.Request) -> web.Response:
    n = _load_numbers(get_context(request))
    return json_response({"loads": [{
        "dp_rank": 0, "num_running_reqs": n["running"], "num_waiting_reqs": n["waiting"],
        "num_used_tokens": n["used_tokens"], "max_total_num_tokens": n["total_tokens"],
        "token_usage": n["usage"], "worker_generation": _GENERATION}]})


async def get_load(request: web.Request) -> web.Response:
    n = _load_numbers(get_context(request))
    return json_response([{"dp_rank": 0, "num_reqs": n["running"] + n["waiting"],
                           "num_waiting_reqs": n["waiting"], "num_tokens": n["used_tokens"]}])


class InferenceGatewayGauges:
    """A Prometheus collector: the engine's queue and KV-cache numbers under the model-server protocol's names."""

    def __init__(self, ctx: ServingContext):
        self.ctx = ctx

    def collect(self):
        n = _load_numbers(self.ctx)
        label = [self.ctx.model_name]
        for name, doc, value in (
                ("vllm:num_requests_waiting", "Requests waiting in the engine's queue", n["waiting"]),
                ("vllm:num_requests_running", "Requests running in the engine", n["running"]),
                ("vllm:kv_cache_usage_perc", "KV cache usage, 1 = 100%", n["usage"]),
                ("vllm:gpu_cache_usage_perc", "KV cache usage, 1 = 100% (the older name)", n["usage"])):
            g = GaugeMetricFamily(name, doc, labels=["model_name"])
            g.add_metric(label, value)
            yield g

    def describe(self):
        return []


def register_router_gauges(ctx: ServingContext) -> None:
    ctx.metrics.registry.register(InferenceGatewayGauges(ctx))


def add_router_routes(app: web.Application, ctx: ServingContext) -> None:
    s = ctx.config.ServerConfig
    # where business and management share a listener, the management /health already answers there
    if (s.ipAddress, s.port) != (s.managementIpAddress, s.managementPort):
        app.router.add_get("/health", business_health)
    app.router.add_get("/v1/loads", loads)
    app.router.add_get("/get_load", get_load)
