"""MindIE's compatibility routes (TGI, vLLM, MindIE native, Triton) end to end: one real daemon for the module,
a tiny random qwen2 model, mutual TLS, raw HTTPS as those clients send it.

Checked for every route: the shape and type of every field, streaming and not; token counts consistent with
`details`; greedy parity with /v1/completions; stopInfer ends a running stream and frees its KV blocks; bad input
gets the MindIE error body with the right status and the daemon stays up.
"""
from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path
from typing import Any, Optional

import jsonschema
import pytest
import yaml

from .load_helpers import wait_all_blocks_free

PROMPT = "The quick brown fox jumps over the lazy dog because"
N = 12
OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"


def _json_schema(node):
    """OpenAPI 3.0 schema -> JSON Schema (2020-12): `nullable`, boolean `exclusiveMinimum`."""
    if isinstance(node, list):
        return [_json_schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _json_schema(v) for k, v in node.items() if k not in ("nullable", "exclusiveMinimum")}
    if node.get("exclusiveMinimum") is True:
        out["exclusiveMinimum"] = out.pop("minimum")
    if node.get("nullable"):
        return {"anyOf": [out, {"type": "null"}]}
    return out


@pytest.fixture(scope="module")
def conforms():
    """conforms(schema_name, value): validates a response against its schema in docs/openapi.yaml."""
    spec = yaml.safe_load(OPENAPI.read_text())
    root = {"components": {"schemas": _json_schema(spec["components"]["schemas"])}}

    def check(name: str, value) -> None:
        jsonschema.Draft202012Validator({**root, "$ref": f"#/components/schemas/{name}"}).validate(value)
    return check


@pytest.fixture(scope="module")
def daemon(daemon_factory, tiny_model):
    # room for a long generation, so that stopInfer surely meets a running request
    return daemon_factory(tiny_model("qwen2"), deploy={"maxSeqLen": 4096}, schedule={"maxIterTimes": 4000})


def post(daemon, path: str, body: Any, *, raw: Optional[bytes] = None, method: str = "POST"
         ) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPSConnection(daemon.host, daemon.port, context=daemon.ssl_context(), timeout=120)
    try:
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def ok_json(daemon, path: str, body: Any) -> Any:
    status, headers, data = post(daemon, path, body)
    assert status == 200, data
    assert headers["content-type"].startswith("application/json")
    return json.loads(data)


def sse_events(data: bytes) -> list[dict]:
    out = []
    for block in data.decode().split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            out.append(json.loads(block[len("data: "):]))
    return out


def stream_sse(daemon, path: str, body: Any) -> list[dict]:
    status, headers, data = post(daemon, path, body)
    assert status == 200, data
    assert headers["content-type"].startswith("text/event-stream")
    return sse_events(data)


@pytest.fixture(scope="module")
def reference(daemon) -> dict:
    """Greedy /v1/completions of PROMPT: the text every compat route must reproduce."""
    resp = ok_json(daemon, "/v1/completions", {"model": daemon.model_name, "prompt": PROMPT, "max_tokens": N,
                                               "temperature": 0})
    return {"text": resp["choices"][0]["text"], "completion_tokens": resp["usage"]["completion_tokens"],
            "prompt_tokens": resp["usage"]["prompt_tokens"], "finish": resp["choices"][0]["finish_reason"]}


def tgi_finish(openai_finish: str) -> str:
    return "length" if openai_finish == "length" else "eos_token"


def check_tokens(tokens: list[dict], with_special: bool = True) -> None:
    for t in tokens:
        assert isinstance(t["id"], int) and isinstance(t["text"], str)
        assert isinstance(t["logprob"], float) and t["logprob"] <= 0
        if with_special:
            assert isinstance(t["special"], bool)


# ----------------------------------------------------------------------------------------------- TGI

def test_tgi_generate_details_and_parity(daemon, reference, conforms):
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": N, "do_sample": False, "details": True,
                                             "temperature": 0.9, "seed": 11}}
    resp = ok_json(daemon, "/generate", body)
    conforms("TgiResponse", resp)
    assert set(resp) == {"generated_text", "details"}
    assert resp["generated_text"] == reference["text"]
    d = resp["details"]
    assert set(d) == {"finish_reason", "generated_tokens", "seed", "prompt_tokens", "prefill", "tokens"}
    assert d["finish_reason"] == tgi_finish(reference["finish"]) and d["seed"] == 11 and d["prefill"] == []
    assert d["generated_tokens"] == len(d["tokens"]) == reference["completion_tokens"]
    assert d["prompt_tokens"] == reference["prompt_tokens"]
    check_tokens(d["tokens"])
    assert "".join(t["text"] for t in d["tokens"]) == resp["generated_text"]


def test_tgi_generate_without_details_and_generated_seed(daemon, conforms):
    resp = ok_json(daemon, "/generate", {"inputs": PROMPT, "parameters": {"max_new_tokens": 4}})
    conforms("TgiResponse", resp)
    assert set(resp) == {"generated_text"} and isinstance(resp["generated_text"], str)
    sampled = ok_json(daemon, "/generate", {"inputs": PROMPT, "parameters": {
        "max_new_tokens": 6, "do_sample": True, "temperature": 1.0, "details": True}})
    seed = sampled["details"]["seed"]
    assert isinstance(seed, int)
    again = ok_json(daemon, "/generate", {"inputs": PROMPT, "parameters": {
        "max_new_tokens": 6, "do_sample": True, "temperature": 1.0, "details": True, "seed": seed}})
    assert again["generated_text"] == sampled["generated_text"]       # the reported seed reproduces the text
    # typical_p and repetition_penalty edit the model's logits in place (LogitsMask, penalties)
    typical = {"inputs": PROMPT, "parameters": {"max_new_tokens": 6, "do_sample": True, "typical_p": 0.3,
                                                "repetition_penalty": 1.03, "seed": 5, "details": True}}
    first, second = ok_json(daemon, "/generate", typical), ok_json(daemon, "/generate", typical)
    assert first["generated_text"] == second["generated_text"] and first["details"]["generated_tokens"] >= 1


def test_tgi_generate_stream(daemon, reference, conforms):
    events = stream_sse(daemon, "/generate_stream", {"inputs": PROMPT, "parameters": {
        "max_new_tokens": N, "do_sample": False, "details": True}})
    for e in events:
        conforms("TgiStreamEvent", e)
    assert len(events) == reference["completion_tokens"]           # one event per generated token
    for e in events:
        assert set(e) == {"token", "generated_text", "details"}
        assert set(e["token"]) == {"id", "text", "logprob", "special"}
    check_tokens([e["token"] for e in events])
    assert all(e["generated_text"] is None and e["details"] is None for e in events[:-1])
    last = events[-1]
    assert last["generated_text"] == reference["text"]
    assert "".join(e["token"]["text"] for e in events) == reference["text"]
    assert set(last["details"]) == {"finish_reason", "generated_tokens", "seed", "prompt_tokens"}
    assert last["details"]["generated_tokens"] == len(events)
    assert last["details"]["prompt_tokens"] == reference["prompt_tokens"]


def test_tgi_root_route(daemon, reference, conforms):
    resp = ok_json(daemon, "/", {"inputs": PROMPT, "parameters": {"max_new_tokens": N, "do_sample": False}})
    conforms("TgiResponse", resp[0])
    assert resp == [{"generated_text": reference["text"]}]
    events = stream_sse(daemon, "/", {"inputs": PROMPT, "stream": True, "parameters": {
        "max_new_tokens": N, "do_sample": False}})
    assert events[-1]["generated_text"] == reference["text"] and events[-1]["details"] is None


def test_tgi_stop_string_ends_generation(daemon, reference):
    text = reference["text"]
    stop = text[len(text) // 2:len(text) // 2 + 2]
    if not stop.strip():
        pytest.skip("the random model's text has no usable stop string here")
    resp = ok_json(daemon, "/generate", {"inputs": PROMPT, "parameters": {
        "max_new_tokens": N, "do_sample": False, "stop": [stop], "details": True}})
    assert resp["generated_text"] == text[:text.index(stop)]
    assert resp["details"]["finish_reason"] == "stop_sequence"


def test_watermark_is_accepted_and_flagged(daemon):
    status, headers, data = post(daemon, "/generate", {"inputs": PROMPT, "parameters": {
        "max_new_tokens": 2, "watermark": True}})
    assert status == 200 and "watermark is not supported" in headers["warning"]
    status, headers, _ = post(daemon, "/generate", {"inputs": PROMPT, "parameters": {"max_new_tokens": 2}})
    assert status == 200 and "warning" not in headers


# ----------------------------------------------------------------------------------------------- vLLM

def test_vllm_generate_and_stream(daemon, reference, conforms):
    resp = ok_json(daemon, "/generate", {"prompt": PROMPT, "max_tokens": N, "temperature": 0,
                                         "model": daemon.model_name})
    conforms("VllmResponse", resp)
    assert resp == {"text": [PROMPT + reference["text"]]}
    status, headers, data = post(daemon, "/generate", {"prompt": PROMPT, "max_tokens": N, "temperature": 0,
                                                       "stream": True})
    assert status == 200 and data.endswith(b"\0")
    objs = [json.loads(part) for part in data.split(b"\0")[:-1]]
    for o in objs:
        conforms("VllmStreamChunk", o)
    assert len(objs) == reference["completion_tokens"]
    assert all(set(o) == {"text"} and len(o["text"]) == 1 and isinstance(o["text"][0], str) for o in objs)
    assert "".join(o["text"][0] for o in objs) == reference["text"]


# ----------------------------------------------------------------------------------------------- MindIE native

def test_infer_and_stream(daemon, reference, conforms):
    params = {"max_new_tokens": N, "do_sample": False, "details": True, "priority": 2, "timeout": 60}
    resp = ok_json(daemon, "/infer", {"inputs": PROMPT, "parameters": params})
    conforms("InferResponse", resp)
    assert resp["generated_text"] == reference["text"]
    d = resp["details"]
    assert set(d) == {"finish_reason", "generated_tokens", "generated_token_ids", "seed"}
    assert d["generated_tokens"] == len(d["generated_token_ids"]) == reference["completion_tokens"]
    assert all(isinstance(t, int) for t in d["generated_token_ids"]) and isinstance(d["seed"], int)
    events = stream_sse(daemon, "/infer", {"inputs": PROMPT, "stream": True, "parameters": params})
    for e in events:
        conforms("InferStreamEvent", e)
    assert [e["token"]["id"] for e in events] == d["generated_token_ids"]
    assert isinstance(events[0]["prefill_time"], int) and events[0]["decode_time"] is None
    assert all(isinstance(e["decode_time"], int) and e["prefill_time"] is None for e in events[1:])
    assert all("generated_text" not in e for e in events[:-1])
    assert events[-1]["generated_text"] == reference["text"]
    assert {**events[-1]["details"], "seed": None} == {**d, "seed": None}     # no seed given: a fresh one each time


def test_tokenizer_counts_what_generation_sends(daemon, reference, conforms):
    resp = ok_json(daemon, "/v1/tokenizer", {"inputs": PROMPT})
    conforms("TokenizerResponse", resp)
    assert resp["token_number"] == reference["prompt_tokens"] == len(resp["tokens"])
    assert "".join(resp["tokens"]) == PROMPT
    assert ok_json(daemon, "/v1/tokenizer", {"inputs": PROMPT, "do_decode": False}) == {
        "token_number": reference["prompt_tokens"], "tokens": []}


# ----------------------------------------------------------------------------------------------- Triton

def test_triton_generate_and_stream(daemon, reference, conforms):
    path = f"/v2/models/{daemon.model_name}"
    body = {"id": "parity_1", "text_input": PROMPT, "parameters": {"max_new_tokens": N, "do_sample": False,
                                                                    "details": True}}
    resp = ok_json(daemon, path + "/generate", body)
    conforms("TritonResponse", resp)
    assert set(resp) == {"id", "model_name", "model_version", "text_output", "details"}
    assert resp["id"] == "parity_1" and resp["model_name"] == daemon.model_name and resp["model_version"] is None
    assert resp["text_output"] == reference["text"]
    d = resp["details"]
    assert set(d) == {"finish_reason", "generated_tokens", "first_token_cost", "decode_cost", "batch_size",
                      "queue_wait_time"}
    assert d["generated_tokens"] == reference["completion_tokens"]
    assert isinstance(d["first_token_cost"], int) and isinstance(d["decode_cost"], int)
    assert d["batch_size"] is None and d["queue_wait_time"] is None
    events = stream_sse(daemon, path + "/generate_stream", {**body, "id": "parity_2"})
    for e in events:
        conforms("TritonStreamEvent", e)
    assert len(events) == d["generated_tokens"] and {e["id"] for e in events} == {"parity_2"}
    assert "".join(e["text_output"] for e in events) == reference["text"]
    assert [e["details"]["generated_tokens"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["details"]["finish_reason"] == d["finish_reason"]


def test_triton_model_routes(daemon, conforms):
    path = f"/v2/models/{daemon.model_name}"
    status, _, data = post(daemon, path, None, method="GET")
    meta = json.loads(data)
    conforms("TritonModelMetadata", meta)
    assert status == 200 and meta["name"] == daemon.model_name and meta["platform"] == "mindie_like"
    assert meta["inputs"][0]["name"] == "text_input" and meta["outputs"][0]["name"] == "text_output"
    status, _, data = post(daemon, path + "/config", None, method="GET")
    conf = json.loads(data)
    conforms("TritonModelConfig", conf)
    deploy = daemon.config["BackendConfig"]["ModelDeployConfig"]
    assert status == 200 and conf["max_seq_len"] == deploy["maxSeqLen"]
    assert conf["max_input_token_len"] == deploy["maxInputTokenLen"]
    assert "model_weight_path" not in conf      # no server paths on the business plane
    assert deploy["ModelConfig"][0]["modelWeightPath"] not in data.decode() and str(daemon.home) not in data.decode()
    assert conf["world_size"] == 1 and conf["model_type"] == "qwen2"
    status, _, data = post(daemon, path + "/ready", None, method="GET")
    assert status == 200 and data == b""


def test_stop_infer_ends_the_stream_and_frees_blocks(daemon, conforms):
    path = f"/v2/models/{daemon.model_name}"
    result: dict = {}

    def run_stream():
        conn = http.client.HTTPSConnection(daemon.host, daemon.port, context=daemon.ssl_context(), timeout=120)
        conn.request("POST", path + "/generate_stream", body=json.dumps({
            "id": "long_job", "text_input": PROMPT, "parameters": {"max_new_tokens": 4000, "details": True,
                                                                   "do_sample": True}}),
            headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        result["status"] = r.status
        first = r.readline()
        started.set()
        result["data"] = first + r.read()
        conn.close()

    started = threading.Event()
    t = threading.Thread(target=run_stream)
    t.start()
    assert started.wait(60)
    status, _, data = post(daemon, path + "/stopInfer", {"id": "long_job"})
    assert status == 200 and json.loads(data) == {"id": "long_job"}
    t.join(60)
    assert not t.is_alive() and result["status"] == 200
    events = sse_events(result["data"])
    for e in events:
        conforms("TritonStreamEvent", e)
    assert events[-1]["details"]["finish_reason"] == "abort"
    # the last event has no token: the engine ended the request without one
    assert events[-1]["text_output"] == "" and events[-1]["details"]["generated_tokens"] == len(events) - 1
    res = json.loads(daemon.request("GET", "/v1/status", plane="management")[1])["resource"]
    assert res["runningRequestNum"] == 0 and res["freeNpuBlockNums"] == res["totalNpuBlockNums"]
    status, _, data = post(daemon, path + "/stopInfer", {"id": "long_job"})
    assert status == 404 and json.loads(data) == {"error": "RequestId is long_job not found.",
                                                  "error_type": "Not Found"}


def _metric(daemon, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families
    text = daemon.request("GET", "/metrics", plane="metrics")[1].decode()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name)


def test_metrics_count_compat_requests(daemon):
    names = ("request_received_total", "request_success_total", "generation_tokens_total")
    before = {n: _metric(daemon, n) for n in names}
    resp = ok_json(daemon, "/infer", {"inputs": PROMPT, "parameters": {"max_new_tokens": 3, "details": True}})
    after = {n: _metric(daemon, n) for n in names}
    assert after["request_received_total"] == before["request_received_total"] + 1
    assert after["request_success_total"] == before["request_success_total"] + 1
    assert after["generation_tokens_total"] == before["generation_tokens_total"] + resp["details"]["generated_tokens"]


def test_client_disconnect_aborts_and_frees_blocks(daemon):
    before = {n: _metric(daemon, n) for n in ("request_success_total", "request_failed_total")}
    conn = http.client.HTTPSConnection(daemon.host, daemon.port, context=daemon.ssl_context(), timeout=120)
    conn.request("POST", "/generate_stream", body=json.dumps({"inputs": PROMPT, "parameters": {
        "max_new_tokens": 4000, "do_sample": True}}), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200 and r.readline().startswith(b"data: ")
    conn.close()
    wait_all_blocks_free(daemon, timeout=60)    # the disconnected request was aborted
    # aborted, not run to its end
    assert _metric(daemon, "request_failed_total") == before["request_failed_total"] + 1
    assert _metric(daemon, "request_success_total") == before["request_success_total"]


# ----------------------------------------------------------------------------------------------- bad input

MODEL_PATH = "/v2/models/{model}"


@pytest.mark.parametrize("path,body,status,needle", [
    ("/generate", {"foo": 1}, 422, "`inputs` or `prompt`"),
    ("/generate", [1, 2], 422, "`inputs` or `prompt`"),
    ("/generate", {"inputs": 5}, 422, "inputs"),
    ("/generate", {"inputs": "x", "parameters": {"max_new_tokens": 0}}, 422, "parameters.max_new_tokens: 0"),
    ("/generate", {"inputs": "x", "parameters": {"top_p": 0}}, 422, "parameters.top_p"),
    ("/generate", {"inputs": "x", "parameters": "hot"}, 422, "parameters"),
    ("/generate", {"prompt": "x", "temperature": -1}, 422, "temperature: -1 is not in [0, inf)"),
    ("/generate", {"prompt": "x", "max_tokens": "many"}, 422, "max_tokens"),
    ("/generate", {"prompt": "x", "model": "gpt-4"}, 422, 'model: Model not found: "gpt-4"'),
    ("/generate_stream", {"inputs": "x", "parameters": {"decoder_input_details": True}}, 422,
     "decoder_input_details"),
    ("/generate_stream", {"inputs": "x", "parameters": {"repetition_penalty": 3.0}}, 422, "repetition_penalty"),
    ("/", {"inputs": "x", "stream": "yes"}, 422, "stream"),
    ("/infer", {"inputs": "x", "parameters": {"priority": 0}}, 422, "parameters.priority: 0 is not in [1, 5]"),
    ("/infer", {"inputs": "x", "parameters": {"timeout": 70000}}, 422, "parameters.timeout"),
    ("/infer", {"inputs": "x", "parameters": {"typical_p": 2}}, 422, "parameters.typical_p"),
    ("/infer", {"inputs": "x" * 100000}, 422, "maxInputTokenLen"),
    ("/v1/tokenizer", {"inputs": 3}, 422, "inputs"),
    (MODEL_PATH + "/generate", {"text_input": "x", "id": "no spaces"}, 422, "id:"),
    (MODEL_PATH + "/generate", {"text_input": "x", "parameters": {"seed": -1}}, 422, "parameters.seed"),
    (MODEL_PATH + "/generate_stream", {"parameters": {}}, 422, "text_input: field required"),
    (MODEL_PATH + "/stopInfer", {"id": 7}, 422, "id"),
    ("/v2/models/nope/generate", {"text_input": "x"}, 404, "Model nope not found."),
    ("/v2/models/nope/generate_stream", {"text_input": "x"}, 404, "Model nope not found."),
    ("/v2/models/nope/stopInfer", {"id": "x"}, 404, "Model nope not found."),
])
def test_bad_input(daemon, conforms, path, body, status, needle):
    code, _, data = post(daemon, path.format(model=daemon.model_name), body)
    assert code == status, data
    err = json.loads(data)
    conforms("ErrorBody", err)
    assert set(err) == {"error", "error_type"} and needle in err["error"], err
    assert err["error_type"] == ("Not Found" if status == 404 else "Input Validation Error")


@pytest.mark.parametrize("path", ["/generate", "/generate_stream", "/", "/infer", "/v1/tokenizer",
                                  MODEL_PATH + "/generate", MODEL_PATH + "/stopInfer"])
def test_invalid_json_everywhere(daemon, path):
    code, _, data = post(daemon, path.format(model=daemon.model_name), None, raw=b'{"inputs": "x",')
    assert code == 422 and json.loads(data)["error"].startswith("Failed to parse request context to json")


@pytest.mark.parametrize("path", ["/v2/models/nope", "/v2/models/nope/config", "/v2/models/nope/ready"])
def test_unknown_model_get_routes(daemon, path):
    code, _, data = post(daemon, path, None, method="GET")
    assert code == 404 and json.loads(data) == {"error": "Model nope not found.", "error_type": "Not Found"}


def test_daemon_still_serves_after_bad_input(daemon):
    assert daemon.proc.poll() is None
    assert ok_json(daemon, "/generate", {"inputs": "ok", "parameters": {"max_new_tokens": 1}})["generated_text"] \
        is not None
