"""The planes in-process (plain HTTP, no model): listener grouping, route tables, guard, error body, logging env."""
from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from mindie_like.assembly import ROUTES, build_context
from mindie_like.config import LoadedConfig, to_engine_config, validate_config
from mindie_like.config.logging_setup import parse_level, setup_logging
from mindie_like.server import Backend, ServingContext, build_listeners, get_context, get_json


def make_ctx(tmp_path: Path, **server) -> ServingContext:
    d = {"ServerConfig": {"httpsEnabled": False, **server},
         "BackendConfig": {"ModelDeployConfig": {"ModelConfig": [{"modelName": "tiny", "modelWeightPath": "w"}]}}}
    cfg, _, _ = validate_config(d, env={})
    loaded = LoadedConfig(config=cfg, path=tmp_path / "conf/config.json", home=tmp_path)
    return build_context(loaded, Backend(tokenizer=None, hf_config=None, model_type="qwen2",
                                         model_path=tmp_path / "w"), to_engine_config(loaded))


def run(app: web.Application, fn):
    async def go():
        async with TestClient(TestServer(app)) as client:
            return await fn(client)
    return asyncio.run(go())


def test_one_listener_when_all_ports_coincide(tmp_path):
    ctx = make_ctx(tmp_path, port=2000, managementPort=2000, metricsPort=2000)
    (ls,) = build_listeners(ctx, ROUTES)
    assert ls.planes == ["business", "management", "metrics"] and ls.ssl_context is None

    async def check(client):
        out = {}
        for path in ("/v1/models", "/health", "/v1/status", "/metrics", "/info", "/v1/config"):
            r = await client.get(path)
            out[path] = r.status
        return out
    assert set(run(ls.app, check).values()) == {200}


def test_model_routes(tmp_path):
    ctx = make_ctx(tmp_path)
    business = next(ls for ls in build_listeners(ctx, ROUTES) if "business" in ls.planes)

    async def check(client):
        a = await client.get("/v1/models/tiny")
        b = await client.get("/v1/models/other")
        return (a.status, json.loads(await a.read())), (b.status, json.loads(await b.read()))
    (sa, a), (sb, b) = run(business.app, check)
    assert sa == 200 and a["id"] == "tiny" and a["object"] == "model"
    assert sb == 404 and b == {"error": "Model not found", "error_type": "Not Found"}


def test_chat_template_path_resolves_against_home(tmp_path):
    ctx = make_ctx(tmp_path)
    assert ctx.chat_template_path is None
    d = {"ServerConfig": {"httpsEnabled": False},
         "BackendConfig": {"ModelDeployConfig": {"ModelConfig": [{
             "modelName": "tiny", "modelWeightPath": "w",
             "models": {"qwen2": {"chat_template": "templates/t.jinja"}}}]}}}
    cfg, _, _ = validate_config(d, env={})
    ctx.loaded = LoadedConfig(config=cfg, path=tmp_path / "conf/config.json", home=tmp_path)
    assert ctx.chat_template_path == tmp_path.resolve() / "templates/t.jinja"


def test_three_listeners_by_default(tmp_path):
    ctx = make_ctx(tmp_path)
    planes = {tuple(ls.planes): (ls.host, ls.port) for ls in build_listeners(ctx, ROUTES)}
    assert planes == {("business",): ("127.0.0.1", 1025), ("management",): ("127.0.0.1", 1026),
                      ("metrics",): ("127.0.0.1", 1027)}


def test_a_route_module_added_to_the_table_gets_the_guarded_body_and_errors(tmp_path):
    seen = {}

    def add_echo(app, ctx):
        async def echo(request):
            body = await get_json(request)
            seen["ctx"] = get_context(request)
            get_context(request).metrics.request_received()
            return web.json_response(body)
        app.router.add_post("/echo", echo)

    routes = {**ROUTES, "business": (*ROUTES["business"], add_echo)}
    ctx = make_ctx(tmp_path, maxRequestLength=1)
    business = next(ls for ls in build_listeners(ctx, routes) if "business" in ls.planes)

    async def check(client):
        ok = await client.post("/echo", data=b'{"a": [1]}')
        deep = await client.post("/echo", data=b"[" * 100000)
        bad = await client.post("/echo", data=b"{")
        big = await client.post("/echo", data=b"x" * (1024 * 1024 + 1))
        empty = await client.post("/echo", data=b"")
        missing = await client.get("/nope")
        method = await client.get("/echo")
        return [(r.status, await r.read()) for r in (ok, deep, bad, big, empty, missing, method)]

    res = run(business.app, check)
    assert res[0] == (200, b'{"a": [1]}')
    for status, body in res[1:]:
        assert set(json.loads(body)) == {"error", "error_type"}
    assert [s for s, _ in res[1:]] == [422, 422, 413, 422, 404, 405]
    assert seen["ctx"] is ctx and ctx.model_name == "tiny" and ctx.model_options.enable_reasoning is False
    assert ctx.inflight == 0


def test_stopping_answers_503_and_health_follows(tmp_path):
    ctx = make_ctx(tmp_path, port=2000, managementPort=2000, metricsPort=2000)
    (ls,) = build_listeners(ctx, ROUTES)
    ctx.stopping = True

    async def check(client):
        a = await client.get("/v1/models")
        b = await client.get("/health")
        return a.status, json.loads(await a.read()), b.status
    status, body, health = run(ls.app, check)
    assert status == 503 and body == {"error": "Service is stopping", "error_type": "Service Unavailable"}
    assert health == 503


def test_log_level_parsing_and_setup(tmp_path):
    assert parse_level("debug") == logging.DEBUG and parse_level("WARN") == logging.WARNING
    assert parse_level("llm:ERROR;server:INFO") == logging.ERROR and parse_level("loud") is None
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        setup_logging(None, env={"MINDIE_LOG_LEVEL": "ERROR", "MINDIE_LOG_TO_STDOUT": "0"})
        assert root.level == logging.ERROR
        ctx = make_ctx(tmp_path)
        setup_logging(ctx.loaded, env={"MINDIE_LOG_TO_FILE": "1", "MINDIE_LOG_TO_STDOUT": "0",
                                       "MINDIE_LOG_PATH": str(tmp_path / "logs")})
        logging.getLogger("mindie_like.test").info("hello file")
        for h in root.handlers:
            h.flush()
        assert "hello file" in (tmp_path / "logs" / "mindie-server.log").read_text()
    finally:
        for h in root.handlers[:]:
            root.removeHandler(h)
            h.close()
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
