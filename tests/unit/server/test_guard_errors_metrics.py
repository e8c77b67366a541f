"""Request guard (depth counting, parsing), the error body, metrics exposition."""
from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mindie_like.engine.types import EngineStats
from mindie_like.protocol.errors import ValidationFailure
from mindie_like.server.errors import ApiError, error_body, error_response
from mindie_like.server.guard import json_max_depth, parse_json, value_max_depth
from mindie_like.server.metrics import CONTENT_TYPE, Metrics


@pytest.mark.parametrize("text,depth", [
    ("1", -1), ('"[[["', -1), ("[]", 0), ("{}", 0), ("[[1]]", 1), ('{"a": [{"b": "[[[["}]}', 2),
    ('[1, [2, {}], {"a": {"b": []}}]', 3), ('["\\"[", [[]]]', 2), ("[" * 100000, 99999),
])
def test_depth_counting(text, depth):
    assert json_max_depth(text.encode()) == depth
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return
    assert value_max_depth(value) == depth


def _nest(depth: int):
    v: list = []
    for _ in range(depth):
        v = [v]
    return v


def test_depth_limit_is_inclusive():
    assert parse_json(json.dumps({"a": _nest(9)}).encode(), 10)        # deepest array at depth 10
    with pytest.raises(ApiError) as e:
        parse_json(json.dumps({"a": _nest(10)}).encode(), 10)          # depth 11
    assert e.value.status == 422 and e.value.message == \
        "JSON nesting depth 11 exceeds the limit of 10 (maxJsonDepth)"


def test_an_ordinary_tool_schema_fits_the_default_depth():
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "items": {"type": "array", "items": {"type": "object", "properties": {
            "kind": {"type": "string", "enum": ["a", "b"]}}}}}}}}
    body = {"model": "m", "messages": [], "tools": [tool]}
    assert value_max_depth(body) == 10
    assert parse_json(json.dumps(body).encode(), 10) == body


@pytest.mark.parametrize("raw", [b"[" * 100000, b"[" * 100000 + b"]" * 100000, b"{\"a\":" * 100000])
def test_very_deep_bodies_are_refused_without_crashing(raw):
    with pytest.raises(ApiError) as e:
        parse_json(raw, 10)
    assert e.value.status == 422 and "depth" in e.value.message


@pytest.mark.parametrize("raw", [b'{"a": ', b"nul", b"\xff\xfe", b"{'a': 1}", b"[1,]", b"NaN"])
def test_invalid_json_is_422(raw):
    with pytest.raises(ApiError) as e:
        parse_json(raw, 10)
    assert (e.value.status, e.value.message, e.value.error_type) == \
        (422, "Failed to parse request context to json", "Input Validation Error")


def test_error_body_shapes():
    r = error_response(503, "busy")
    assert r.status == 503 and json.loads(r.body) == {"error": "busy", "error_type": "Service Unavailable"}
    assert json.loads(error_response(424, "x").body)["error_type"] == "Generation Error"
    assert json.loads(error_response(500, "x").body)["error_type"] == "Incomplete Generation"
    assert json.loads(error_response(422, "x").body)["error_type"] == "Input Validation Error"
    assert error_body("m", "t") == {"error": "m", "error_type": "t"}
    assert json.loads(error_response(413, "x").body)["error_type"] == "Request Entity Too Large"
    e = ApiError(422, "temperature: -1 is not >= 0")
    assert json.loads(e.response().body)["error_type"] == "Input Validation Error"
    # one table: the serving layer's failures and the HTTP layer's errors spell a status the same way
    for status in (400, 404, 413, 422, 424, 500, 503, 599):
        assert ValidationFailure(status, "m").error_type == ApiError(status, "m").error_type


def test_metrics_names_labels_and_parse():
    m = Metrics("my-model")
    m.request_received()
    m.request_received()
    m.request_success()
    m.request_failed()
    m.add_tokens(prompt=12, generation=5)
    m.observe_ttft(0.05)
    m.observe_token_time(0.02)
    m.observe_e2e(1.5)
    text = m.render(EngineStats(running=3, waiting=2, total_blocks=100, free_blocks=25)).decode()
    fam = {f.name: f for f in text_string_to_metric_families(text)}
    val = {s.name: s.value for f in fam.values() for s in f.samples if not s.name.endswith("_bucket")}
    assert val["request_received_total"] == 2 and val["request_success_total"] == 1
    assert val["request_failed_total"] == 1
    assert val["prompt_tokens_total"] == 12 and val["generation_tokens_total"] == 5
    assert val["num_requests_running"] == 3 and val["num_requests_waiting"] == 2
    assert val["npu_cache_usage_perc"] == pytest.approx(0.75)
    assert val["time_to_first_token_seconds_count"] == 1 and val["e2e_request_latency_seconds_sum"] == 1.5
    assert val["time_per_output_token_seconds_count"] == 1
    assert all(s.labels["model_name"] == "my-model" for f in fam.values() for s in f.samples)
    assert "_created" not in text
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")
    # without an engine: zeros
    text = Metrics("x").render(None).decode()
    assert 'npu_cache_usage_perc{model_name="x"} 0.0' in text
