"""The routes this module owns: /v1/models (business), health/status/config/info (management), /metrics."""
from __future__ import annotations

import orjson
from aiohttp import web

from .. import __version__
from ..config.loader import effective_config
from .context import get_context
from .errors import ApiError
from .metrics import CONTENT_TYPE


def json_response(data, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


# -- business ----------------------------------------------------------------------------------------------
def _model_card(ctx) -> dict:
    return {"id": ctx.model_name, "object": "model", "created": int(ctx.started_at), "owned_by": "mindie_like",
            "root": ctx.model_name, "max_model_len": ctx.config.deploy.maxSeqLen}


async def list_models(request: web.Request) -> web.Response:
    ctx = get_context(request)
    return json_response({"object": "list", "data": [_model_card(ctx)]})


async def get_model(request: web.Request) -> web.Response:
    ctx = get_context(request)
    if request.match_info["model"] != ctx.model_name:
        raise ApiError(404, "Model not found")
    return json_response(_model_card(ctx))


def add_model_routes(app: web.Application, ctx) -> None:
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)


# -- management --------------------------------------------------------------------------------------------
async def health(request: web.Request) -> web.Response:
    ctx = get_context(request)
    return web.Response(status=503 if ctx.stopping else 200)


async def live(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def ready(request: web.Request) -> web.Response:
    ctx = get_context(request)
    return web.Response(status=200 if ctx.ready else 503)


async def status(request: web.Request) -> web.Response:
    ctx = get_context(request)
    st = ctx.engine_stats()
    running = int(st.running)
    return json_response({
        "service": {"roleStatus": "RoleReady" if ctx.ready else "RoleUnknown", "currentRole": "none"},
        "resource": {
            "availSlotsNum": max(0, ctx.config.schedule.maxBatchSize - running),
            "availBlockNum": int(st.free_blocks),
            "waitingRequestNum": int(st.waiting),
            "runningRequestNum": running,
            "swappedRequestNum": int(st.swapped),
            "freeNpuBlockNums": int(st.free_blocks),
            "freeCpuBlockNums": int(st.free_cpu_blocks),
            "totalNpuBlockNums": int(st.total_blocks),
            "totalCpuBlockNums": int(st.total_cpu_blocks),
        },
    })


async def config(request: web.Request) -> web.Response:
    return json_response(effective_config(get_context(request).config))


async def info(request: web.Request) -> web.Response:
    ctx = get_context(request)
    ec = ctx.engine_config
    return json_response({
        "model_id": ctx.model_name,
        "model_type": ctx.backend.model_type,
        "model_dtype": ec.dtype,
        "model_device_type": ec.device,
        "max_input_length": ec.max_input_len,
        "max_total_tokens": ec.max_seq_len,
        "max_batch_size": ec.max_batch_size,
        "max_iter_times": ec.max_iter_times,
        "world_size": ec.world_size,
        "engine_loaded": ctx.engine is not None,
        "version": __version__,
        "router": "mindie_like",
    })


def add_management_routes(app: web.Application, ctx) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/config", config)
    app.router.add_get("/info", info)


# -- metrics -----------------------------------------------------------------------------------------------
async def metrics(request: web.Request) -> web.Response:
    ctx = get_context(request)
    body = ctx.metrics.render(ctx.engine_stats())
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def add_metrics_routes(app: web.Application, ctx) -> None:
    app.router.add_get("/metrics", metrics)
