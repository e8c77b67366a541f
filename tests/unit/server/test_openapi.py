"""docs/openapi.yaml cannot drift from the code: it is what tools/gen_openapi.py generates now, and its paths are
exactly the routes the planes register (with an engine and without), each on the plane its `x-mindie-plane`
names."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from mindie_like.assembly import ROUTES, build_context
from mindie_like.config import LoadedConfig, to_engine_config, validate_config
from mindie_like.server import PLANES, Backend
from mindie_like.server.app import build_app
from tests.support.serving_fakes import FakeEngine, load_test_tokenizer

REPO = Path(__file__).resolve().parents[3]
METHODS = ("get", "put", "post", "delete", "patch", "options", "head")


def _generator():
    spec = importlib.util.spec_from_file_location("gen_openapi", REPO / "tools" / "gen_openapi.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod          # pydantic resolves the module's annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def test_checked_in_openapi_yaml_is_what_the_code_generates():
    gen = _generator()
    assert (REPO / "docs" / "openapi.yaml").read_text() == gen.render(), \
        "docs/openapi.yaml is out of date: run python tools/gen_openapi.py"


def _documented() -> dict[tuple[str, str], str]:
    """(METHOD, path) -> plane, over docs/openapi.yaml."""
    out = {}
    for path, item in yaml.safe_load((REPO / "docs" / "openapi.yaml").read_text())["paths"].items():
        assert item.get("x-mindie-plane") in PLANES, f"{path}: x-mindie-plane is not one of {PLANES}"
        for method in METHODS:
            if method in item:
                out[(method.upper(), path)] = item["x-mindie-plane"]
    return out


def _registered(tmp_path, with_engine: bool) -> dict[tuple[str, str], str]:
    """(METHOD, path) -> plane of every route the daemon registers, with an engine (a scripted one over the test
    tokenizer) or without (the daemon before its engine is plugged in: the generating routes answer 503)."""
    cfg, _, _ = validate_config({"ServerConfig": {"httpsEnabled": False}, "BackendConfig": {"ModelDeployConfig": {
        "ModelConfig": [{"modelName": "tiny", "modelWeightPath": "w"}]}}}, env={})
    loaded = LoadedConfig(config=cfg, path=tmp_path / "conf/config.json", home=tmp_path)
    tokenizer = load_test_tokenizer() if with_engine else None
    backend = Backend(tokenizer=tokenizer, hf_config=None, model_type="qwen2", model_path=tmp_path / "w",
                      engine=FakeEngine(tokenizer) if with_engine else None)
    ctx = build_context(loaded, backend, to_engine_config(loaded))
    out = {}
    for plane in PLANES:
        app, _ = build_app(ctx, [plane], ROUTES)
        for route in app.router.routes():
            if route.method != "HEAD":     # aiohttp adds HEAD to every GET
                out[(route.method, route.resource.canonical)] = plane
    return out


@pytest.mark.parametrize("with_engine", [False, True], ids=["engine-less", "with-engine"])
def test_every_registered_route_is_documented_on_its_plane(tmp_path, with_engine):
    assert _documented() == _registered(tmp_path, with_engine)


def test_schemas_are_openapi_30():
    """No JSON Schema 2020-12 leftovers that OpenAPI 3.0 tools reject."""
    text = (REPO / "docs" / "openapi.yaml").read_text()
    spec = yaml.safe_load(text)
    assert spec["openapi"].startswith("3.0")
    for leftover in ("$defs", "const:", "type: 'null'", "prefixItems"):
        assert leftover not in text
    temperature = spec["components"]["schemas"]["ChatCompletionRequest"]["properties"]["temperature"]
    assert temperature == {"type": "number", "minimum": 0, "nullable": True}
