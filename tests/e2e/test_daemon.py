"""The daemon over mutual TLS: curl with and without the right client certificates, the request guard, the
connection cap, the management and metrics planes."""
from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mindie_like.server import certgen

@pytest.fixture(scope="module")
def d(daemon_factory, tiny_model):
    # the shipped KV sizing (npuMemSize -1: a share of available RAM), which the other modules' daemons skip
    return daemon_factory(tiny_model("qwen2"), server={"maxLinkNum": 10, "maxRequestLength": 1},
                          model={"npuMemSize": -1})


def curl(d, url, client="client", extra=()):
    return subprocess.run(d.curl_args(client, plane=d.plane_of_url(url)) + list(extra) + [url], capture_output=True,
                          text=True, timeout=90)


# -- mutual TLS -----------------------------------------------------------------------------------------------
def test_curl_with_client_cert_gets_models_and_health(d):
    r = curl(d, d.base_url + "/v1/models")
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert body["object"] == "list" and body["data"][0]["id"] == d.model_name
    r = curl(d, d.management_url + "/health", extra=["-o", "/dev/null", "-w", "%{http_code}"])
    assert r.returncode == 0 and r.stdout == "200", (r.stdout, r.stderr)
    r = curl(d, f"{d.base_url}/v1/models/{d.model_name}")
    assert json.loads(r.stdout)["id"] == d.model_name


def test_openai_client_lists_models(d):
    with d.openai_client() as client:
        assert [m.id for m in client.models.list()] == [d.model_name]


def test_no_client_cert_is_refused(d):
    r = curl(d, d.base_url + "/v1/models", client=None)
    assert r.returncode != 0 and r.stdout == ""
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        with socket.create_connection((d.host, d.port), timeout=30) as s:
            with d.ssl_context(client=None).wrap_socket(s, server_hostname=d.host) as t:
                t.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
                if not t.recv(100):
                    raise ConnectionError("closed without data")


def test_client_cert_from_another_ca_is_refused(d, tmp_path):
    rogue_ca = certgen.make_ca("rogue CA")
    rogue = certgen.issue_cert(rogue_ca, "rogue client", server=False)
    cert = certgen.write_cert(tmp_path / "rogue.pem", rogue.cert)
    key = certgen.write_key(tmp_path / "rogue.key.pem", rogue.key)
    r = subprocess.run(d.curl_args(None) + ["--cert", str(cert), "--key", str(key), d.base_url + "/v1/models"],
                       capture_output=True, text=True, timeout=90)
    assert r.returncode != 0 and r.stdout == ""


def test_revoked_client_cert_is_refused(d):
    r = curl(d, d.base_url + "/v1/models", client="revoked")
    assert r.returncode != 0 and r.stdout == ""
    r = curl(d, d.management_url + "/health", client="revoked")
    assert r.returncode != 0 and r.stdout == ""


@pytest.mark.parametrize("plane", ["business", "management", "metrics"])
def test_each_plane_opens_only_with_its_own_client_certificate(d, plane):
    """Per-plane CAs: a client certificate of one plane is refused at the handshake of the others."""
    path = {"business": "/v1/models", "management": "/v1/config", "metrics": "/metrics"}[plane]
    url = {"business": d.base_url, "management": d.management_url, "metrics": d.metrics_url}[plane] + path
    ok = curl(d, url, extra=["-o", "/dev/null", "-w", "%{http_code}"])
    assert ok.returncode == 0 and ok.stdout == "200", (ok.stdout, ok.stderr)
    for other in {"business", "management", "metrics"} - {plane}:
        r = subprocess.run(d.curl_args(other, plane=plane) + [url], capture_output=True, text=True, timeout=90)
        assert r.returncode != 0 and r.stdout == "", (other, plane, r.stdout)
        # and trusting the other plane's CA does not get a client in either
        r = subprocess.run(d.curl_args(other, plane=other) + ["-k", url], capture_output=True, text=True, timeout=90)
        assert r.returncode != 0 and r.stdout == "", (other, plane, r.stdout)


def test_plain_http_to_https_port_serves_no_data(d):
    with socket.create_connection((d.host, d.port), timeout=30) as s:
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    assert b"HTTP/1." not in data and d.model_name.encode() not in data
    r = subprocess.run(["curl", "-sS", "--max-time", "30", f"http://{d.host}:{d.port}/v1/models"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and d.model_name not in r.stdout


# -- request guard ----------------------------------------------------------------------------------------------
def test_body_over_the_cap_is_413(d, tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b'{"a":"' + b"x" * (1024 * 1024) + b'"}')
    r = curl(d, d.base_url + "/v1/chat/completions",
             extra=["-H", "Content-Type: application/json", "--data-binary", f"@{big}", "-w", "\n%{http_code}"])
    body, _, code = r.stdout.rpartition("\n")
    assert code == "413", (r.stdout[:300], r.stderr)
    err = json.loads(body)
    assert err["error_type"] and "maxRequestLength" in err["error"]
    # announced too big: refused before any of the body is read
    with socket.create_connection((d.host, d.port), timeout=60) as s:
        with d.ssl_context().wrap_socket(s, server_hostname=d.host) as t:
            t.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 5000000\r\n\r\n{")
            assert t.recv(4096).startswith(b"HTTP/1.1 413")
    # chunked upload (no Content-Length) is capped while reading
    status, body = d.request("POST", "/v1/chat/completions", body=iter([b'{"a":"', b"x" * (1024 * 1024), b'"}']))
    assert status == 413 and "error" in json.loads(body)


def test_depth_11_is_422_with_default_limit(d):
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    inner: list = [1]
    for _ in range(10):        # the top-level object is depth 0; eleven arrays inside it reach depth 11
        inner = [inner]
    body["deep"] = inner
    status, raw = d.request("POST", "/v1/chat/completions", body)
    assert status == 422
    err = json.loads(raw)
    assert err["error_type"] == "Input Validation Error"
    assert "11" in err["error"] and "10" in err["error"]


def test_depth_100000_is_422_and_the_daemon_still_answers(d):
    status, raw = d.request("POST", "/v1/chat/completions", b"[" * 100000)
    assert status == 422 and "depth" in json.loads(raw)["error"]
    status, raw = d.request("POST", "/v1/chat/completions", b"[" * 100000 + b"]" * 100000)
    assert status == 422 and "depth 99999" in json.loads(raw)["error"]
    status, raw = d.request("GET", "/v1/models")
    assert status == 200 and json.loads(raw)["data"][0]["id"] == d.model_name


def test_invalid_json_is_422(d):
    status, raw = d.request("POST", "/v1/chat/completions", b'{"model": ')
    assert status == 422
    assert json.loads(raw) == {"error": "Failed to parse request context to json",
                               "error_type": "Input Validation Error"}


def test_unknown_route_has_the_error_body(d):
    status, raw = d.request("GET", "/no/such/route")
    assert status == 404 and set(json.loads(raw)) == {"error", "error_type"}


def test_50_connections_against_maxlinknum_10(d):
    """Each connection sends its headers and half its body; the first 10 are admitted and wait for the rest,
    the other 40 get 503 at once. Then the admitted ones finish their bodies and get answers: none hang."""
    async def run():
        ctx = d.ssl_context()
        payload = b'{"model": "x", "pad": "' + b"y" * 20 + b'"}'
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {d.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()

        async def open_one():
            r, w = await asyncio.open_connection(d.host, d.port, ssl=ctx)
            w.write(head + payload[:10])
            await w.drain()
            return r, w

        conns = await asyncio.gather(*(open_one() for _ in range(50)))

        async def status_of(r):
            line = await r.readline()
            return int(line.split()[1]) if line else None

        tasks = [asyncio.ensure_future(status_of(r)) for r, _ in conns]
        # wait until the 40 refusals are in (bounded: a hang fails the test instead of blocking it)
        for _ in range(600):
            if sum(t.done() for t in tasks) >= 40:
                break
            await asyncio.sleep(0.1)
        early = [t.result() for t in tasks if t.done()]
        for (_, w), t in zip(conns, tasks):
            if not t.done():
                w.write(payload[10:])
                await w.drain()
        done, pending = await asyncio.wait(tasks, timeout=120)
        for _, w in conns:
            w.close()
        return early, [t.result() for t in tasks if t.done()], len(pending)

    early, final, pending = asyncio.run(run())
    assert pending == 0
    assert early.count(503) == 40 and len(early) == 40
    assert final.count(503) == 40
    assert len(final) == 50 and all(s is not None and s != 503 for s in final if s != 503)
    # and the daemon is healthy afterwards
    assert d.request("GET", "/v1/models")[0] == 200


# -- management and metrics planes -------------------------------------------------------------------------------
def test_management_routes(d):
    for path in ("/health", "/v2/health/live", "/v2/health/ready"):
        assert d.request("GET", path, plane="management")[0] == 200
    status, raw = d.request("GET", "/v1/status", plane="management")
    st = json.loads(raw)
    assert st["service"]["roleStatus"] == "RoleReady"
    assert set(st["resource"]) == {"availSlotsNum", "availBlockNum", "waitingRequestNum", "runningRequestNum",
                                   "swappedRequestNum", "freeNpuBlockNums", "freeCpuBlockNums",
                                   "totalNpuBlockNums", "totalCpuBlockNums"}
    assert all(isinstance(v, int) for v in st["resource"].values())
    status, raw = d.request("GET", "/v1/config", plane="management")
    cfg = json.loads(raw)
    assert cfg["ServerConfig"]["maxLinkNum"] == 10 and cfg["BackendConfig"]["ScheduleConfig"]["cacheBlockSize"] == \
        d.config["BackendConfig"]["ScheduleConfig"]["cacheBlockSize"]
    status, raw = d.request("GET", "/info", plane="management")
    assert json.loads(raw)["model_id"] == d.model_name and json.loads(raw)["model_type"] == "qwen2"
    # business routes are not on the management plane
    assert d.request("GET", "/v1/models", plane="management")[0] == 404


def test_metrics_parse_with_prometheus_parser(d):
    status, raw = d.request("GET", "/metrics", plane="metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(raw.decode())}
    for name in ("request_received", "request_success", "request_failed", "prompt_tokens", "generation_tokens",
                 "num_requests_running", "num_requests_waiting", "npu_cache_usage_perc",
                 "time_to_first_token_seconds", "time_per_output_token_seconds", "e2e_request_latency_seconds"):
        assert name in families, name
        assert all(s.labels.get("model_name") == d.model_name for s in families[name].samples)
    assert "request_received_total" in raw.decode()
    r = curl(d, d.metrics_url + "/metrics", extra=["-o", "/dev/null", "-w", "%{content_type}"])
    assert r.stdout.startswith("text/plain") and "0.0.4" in r.stdout


def _step_series(d) -> dict:
    status, raw = d.request("GET", "/metrics", plane="metrics")
    assert status == 200
    fam = {f.name: f for f in text_string_to_metric_families(raw.decode())}["engine_step_seconds"]
    assert fam.type == "histogram"
    return {(s.name, s.labels["phase"]): s.value for s in fam.samples
            if s.name.endswith(("_count", "_sum")) and s.labels.get("model_name") == d.model_name}


def test_engine_step_metric_grows_after_a_request(d):
    """engine_step_seconds{phase}: the engine's own step, observed in the daemon (benchmarks/bench_itl.py reads it
    to compare streamed inter-token latency with the step time)."""
    before = _step_series(d)
    assert set(before) == {(f"engine_step_seconds_{k}", p) for k in ("count", "sum") for p in ("decode", "prefill")}
    with d.openai_client() as client:
        r = client.chat.completions.create(model=d.model_name, messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=4, temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 4
    after = _step_series(d)
    # one prefill step gives the first token, three decode steps the rest
    assert after[("engine_step_seconds_count", "prefill")] >= before[("engine_step_seconds_count", "prefill")] + 1
    assert after[("engine_step_seconds_count", "decode")] >= before[("engine_step_seconds_count", "decode")] + 3
    assert after[("engine_step_seconds_sum", "decode")] > before[("engine_step_seconds_sum", "decode")]


# -- prefix cache at the shipped block size -------------------------------------------------------------------
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city, in the unit asked for.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                     "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city"]}}}
SYSTEM = "You are a careful assistant. Call a function when it answers the question; otherwise answer briefly."


def test_shared_system_and_tools_are_reused_to_the_token(d):
    """The shipped config (cacheBlockSize, prefix cache reused to the token): a repeat of a prompt computes only
    its last token, and a new user message after the same system + tools recomputes only that message's turn."""
    block_size = d.config["BackendConfig"]["ScheduleConfig"]["cacheBlockSize"]

    def usage(user: str):
        with d.openai_client() as client:
            r = client.chat.completions.create(
                model=d.model_name, max_tokens=1, tools=[WEATHER],
                messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}])
        return r.usage.prompt_tokens, r.usage.prompt_tokens_details.cached_tokens

    ask = "What is the weather in Reykjavik, in celsius?"
    n, _ = usage(ask)
    # whole blocks would serve only a multiple of the block size; the prompt is chosen so that this differs
    assert (n - 1) % block_size != 0, n
    assert usage(ask) == (n, n - 1)                # all but the last token, whose logits are needed
    other = "Tell me a short joke about cats."
    n_other, cached = usage(other)
    recomputed = n_other - cached
    # the user turn: its text, the turn markers around it and the assistant header (a few tokens)
    assert 0 < recomputed <= len(other.split()) * 3 + 10, (n_other, cached)
    assert cached < n - 1
