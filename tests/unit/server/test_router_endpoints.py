"""What routers read from a daemon, in-process and without an engine: the business /health says 503 until an
engine serves (the gateway must not register or route to it), the load reports and gauges are there and zero."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from mindie_like.assembly import ROUTES, build_context
from mindie_like.config import LoadedConfig, to_engine_config, validate_config
from mindie_like.server import Backend, build_listeners


def make_ctx(tmp_path: Path):
    d = {"ServerConfig": {"httpsEnabled": False},
         "BackendConfig": {"ModelDeployConfig": {"ModelConfig": [{"modelName": "tiny", "modelWeightPath": "w"}]}}}
    cfg, _, _ = validate_config(d, env={})
    loaded = LoadedConfig(config=cfg, path=tmp_path / "conf/config.json", home=tmp_path)
    return build_context(loaded, Backend(tokenizer=None, hf_config=None, model_type="qwen2",
                                         model_path=tmp_path / "w"), to_engine_config(loaded))


def run(app, fn):
    async def go():
        async with TestClient(TestServer(app)) as client:
            return await fn(client)
    return asyncio.run(go())


def test_engine_less_daemon_is_not_healthy_for_routers(tmp_path):
    ctx = make_ctx(tmp_path)
    listeners = build_listeners(ctx, ROUTES)
    business = next(ls for ls in listeners if "business" in ls.planes)
    metrics = next(ls for ls in listeners if "metrics" in ls.planes)

    async def check(client):
        out = {}
        for path in ("/health", "/v1/loads", "/get_load"):
            r = await client.get(path)
            out[path] = (r.status, await r.read())
        return out
    got = run(business.app, check)
    assert got["/health"][0] == 503
    loads = json.loads(got["/v1/loads"][1])["loads"]
    assert got["/v1/loads"][0] == 200 and len(loads) == 1
    assert loads[0]["num_running_reqs"] == loads[0]["num_waiting_reqs"] == 0 and loads[0]["token_usage"] == 0.0
    assert json.loads(got["/get_load"][1]) == [{"dp_rank": 0, "num_reqs": 0, "num_waiting_reqs": 0,
                                                "num_tokens": 0}]

    async def scrape(client):
        r = await client.get("/metrics")
        return (await r.read()).decode()
    text = run(metrics.app, scrape)
    for name in ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
                 "vllm:gpu_cache_usage_perc"):
        assert f'{name}{{model_name="tiny"}} 0.0' in text, name
