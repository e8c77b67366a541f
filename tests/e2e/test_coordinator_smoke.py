"""The default suite's one look at bin/ms_coordinator: a daemon behind it answers a chat request through the
predict port over mutual TLS exactly as it answers directly, the gateway reached the daemon with the coordinator's
client certificate, and a client without a certificate is refused. The multi-daemon behaviour is in
test_scaleout.py (-m scaleout)."""
from __future__ import annotations

import json
import ssl

import pytest

from .coordinator_helpers import new_shared_daemon, start_coordinator, tools_available

pytestmark = pytest.mark.skipif(tools_available() is not None, reason=tools_available() or "")


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_model):
    d = new_shared_daemon(tmp_path_factory.mktemp("home"), tiny_model("qwen2")).start()
    try:
        c = start_coordinator(tmp_path_factory.mktemp("coord"), d, [d.base_url], algorithm="round_robin")
        try:
            yield d, c
        finally:
            c.stop()
    finally:
        d.stop()


def test_one_request_through_the_coordinator(pair):
    d, c = pair
    body = {"model": d.model_name, "messages": [{"role": "user", "content": "Say hello."}], "temperature": 0,
            "max_tokens": 8}
    status, direct = d.request("POST", "/v1/chat/completions", body)
    assert status == 200, direct
    via = c.openai_client().chat.completions.create(**body)
    assert via.choices[0].message.content == json.loads(direct)["choices"][0]["message"]["content"]
    status, raw = c.request("GET", "/health")
    assert status == 200, raw
    # the manage port: the gateway's worker list (admin key added by nginx) and its Prometheus metrics
    workers = c.workers()
    assert [w["url"] for w in workers] == [d.base_url] and workers[0]["is_healthy"]
    status, raw = c.request("GET", "/metrics", plane="manage")
    assert status == 200 and b"# TYPE" in raw
    assert c.request("GET", "/workers")[0] == 404                     # not on the predict port
    # no client certificate: nginx refuses in MindIE's error shape
    status, raw = c.request("GET", "/v1/models", context=ssl.create_default_context(cafile=str(c.certs["ca"])))
    assert status == 403 and json.loads(raw)["error_type"] == "Forbidden"


def test_what_the_daemon_exposes_for_routers(pair):
    d, _ = pair
    assert d.request("GET", "/health")[0] == 200                     # business plane
    status, raw = d.request("GET", "/v1/loads")
    load = json.loads(raw)["loads"][0]
    assert status == 200 and load["num_waiting_reqs"] == 0 and 0.0 <= load["token_usage"] <= 1.0
    assert load["max_total_num_tokens"] > 0 and load["worker_generation"]
    status, raw = d.request("GET", "/get_load")
    assert status == 200 and json.loads(raw)[0]["num_reqs"] == 0
    status, raw = d.request("GET", "/metrics", plane="metrics")
    text = raw.decode()
    for name in ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
                 "vllm:gpu_cache_usage_perc", "num_requests_waiting", "npu_cache_usage_perc"):
        assert f'\n{name}{{model_name="{d.model_name}"}} ' in text, name
