"""Several daemons behind bin/ms_coordinator (the SGLang Model Gateway behind an nginx TLS front), loopback only:
mutual TLS on both hops, the scheduling algorithms, instances added and removed at runtime through the manage port,
SIGTERM draining, and a daemon killed mid-run. Run with -m scaleout (3.5 minutes on 2 busy cores)."""
from __future__ import annotations

import asyncio
import json
import signal
import ssl
import time

import openai
import pytest

from mindie_like.server import certgen

from .coordinator_helpers import new_shared_daemon, requests_received, start_coordinator, tools_available

pytestmark = [pytest.mark.scaleout,
              pytest.mark.skipif(tools_available() is not None, reason=tools_available() or "")]

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
STREAM_BOUND_S = 30


@pytest.fixture(scope="module")
def daemons(tmp_path_factory, tiny_model):
    model = tiny_model("qwen2")
    a = new_shared_daemon(tmp_path_factory.mktemp("home_a"), model)
    b = new_shared_daemon(tmp_path_factory.mktemp("home_b"), model, certs_from=a)
    started = []
    try:
        for d in (a, b):
            started.append(d.start())
        yield a, b
    finally:
        for d in started:
            d.stop()


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory, daemons):
    a, b = daemons
    c = start_coordinator(tmp_path_factory.mktemp("coord"), a, [a.base_url, b.base_url], algorithm="round_robin")
    try:
        c.wait_workers(lambda ws: len(ws) == 2 and all(w["is_healthy"] for w in ws))
        yield c
    finally:
        c.stop()


def chat_body(model: str, text: str, **kw) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], "temperature": 0, "max_tokens": 12,
            **kw}


def counters(*daemons) -> list[float]:
    return [requests_received(d) for d in daemons]


def test_tool_call_through_the_coordinator_matches_the_daemon(daemons, coordinator):
    a, _ = daemons
    body = chat_body(a.model_name, "What is the weather in Paris?", tools=TOOLS, max_tokens=24)
    direct = a.openai_client().chat.completions.create(**body)
    for _ in range(2):                                  # round robin: both instances answer once
        via = coordinator.openai_client().chat.completions.create(**body)
        assert via.choices[0].message.content == direct.choices[0].message.content
        assert (via.choices[0].message.tool_calls or []) == (direct.choices[0].message.tool_calls or [])
        assert via.choices[0].finish_reason == direct.choices[0].finish_reason
    chunks = list(coordinator.openai_client().chat.completions.create(**body, stream=True))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == (direct.choices[0].message.content or "")


def test_clients_without_a_certificate_of_the_ca_are_refused(coordinator, tmp_path):
    c = coordinator
    bare = ssl.create_default_context(cafile=str(c.certs["ca"]))
    other = certgen.make_ca("another CA")
    stranger = certgen.issue_cert(other, "stranger", server=False)
    certgen.write_cert(tmp_path / "s.pem", stranger.cert)
    certgen.write_key(tmp_path / "s.key", stranger.key)
    foreign = ssl.create_default_context(cafile=str(c.certs["ca"]))
    foreign.load_cert_chain(str(tmp_path / "s.pem"), str(tmp_path / "s.key"))
    for ctx in (bare, foreign, c.ssl_context("revoked")):
        status, raw = c.request("GET", "/v1/models", context=ctx)
        assert status == 403, raw
        assert json.loads(raw) == {"error": "Forbidden: a client certificate signed by the configured CA is "
                                            "required", "error_type": "Forbidden"}
    manage_bare = ssl.create_default_context(cafile=str(c.ca("manage")))
    manage_foreign = ssl.create_default_context(cafile=str(c.ca("manage")))
    manage_foreign.load_cert_chain(str(tmp_path / "s.pem"), str(tmp_path / "s.key"))
    for ctx in (manage_bare, manage_foreign, c.ssl_context("business", plane="manage")):   # the manage port alike,
        assert c.request("GET", "/workers", plane="manage", context=ctx)[0] == 403      # business clients included
    with pytest.raises(openai.APIStatusError) as e:
        openai.OpenAI(base_url=c.base_url + "/v1", api_key="x", max_retries=0,
                      http_client=openai.DefaultHttpxClient(verify=foreign)).models.list()
    assert e.value.status_code == 403


def test_round_robin_spreads_requests_over_both(daemons, coordinator):
    a, b = daemons
    before = counters(a, b)
    client = coordinator.openai_client()
    for i in range(20):
        r = client.chat.completions.create(**chat_body(a.model_name, f"Request {i}", max_tokens=2))
        assert r.choices[0].finish_reason in ("length", "stop")
    got = [x - y for x, y in zip(counters(a, b), before)]
    assert sum(got) == 20 and got == [10, 10], got


def test_cache_affinity_keeps_a_shared_prefix_on_one_instance(tmp_path_factory, daemons):
    a, b = daemons
    c = start_coordinator(tmp_path_factory.mktemp("coord_ca"), a, [a.base_url, b.base_url],
                          algorithm="cache_affinity")
    try:
        c.wait_workers(lambda ws: len(ws) == 2 and all(w["is_healthy"] for w in ws))
        prefix = "You are a careful assistant for the weather desk. " * 40
        client = c.openai_client()
        before = counters(a, b)
        for i in range(8):
            client.chat.completions.create(model=a.model_name, temperature=0, max_tokens=2, messages=[
                {"role": "system", "content": prefix}, {"role": "user", "content": f"Question number {i}?"}])
        got = [x - y for x, y in zip(counters(a, b), before)]
        assert sorted(got) == [0, 8], got
    finally:
        c.stop()


def test_load_balance_serves_through_power_of_two(tmp_path_factory, daemons):
    """load_balance → the gateway's power_of_two, which reads each daemon's /v1/loads."""
    a, b = daemons
    c = start_coordinator(tmp_path_factory.mktemp("coord_lb"), a, [a.base_url, b.base_url],
                          algorithm="load_balance")
    try:
        c.wait_workers(lambda ws: len(ws) == 2 and all(w["is_healthy"] for w in ws))
        client = c.openai_client()
        before = counters(a, b)
        for i in range(10):
            r = client.chat.completions.create(**chat_body(a.model_name, f"Balanced {i}", max_tokens=2))
            assert r.choices[0].finish_reason in ("length", "stop")
        got = [x - y for x, y in zip(counters(a, b), before)]
        assert sum(got) == 10, got
    finally:
        c.stop()


def test_an_instance_added_at_runtime_gets_traffic_and_none_once_removed(tmp_path_factory, tiny_model, daemons,
                                                                        coordinator):
    a, b = daemons
    c = coordinator
    third = new_shared_daemon(tmp_path_factory.mktemp("home_c"), tiny_model("qwen2"), certs_from=a).start()
    try:
        add = {"url": third.base_url}
        status, raw = c.request("POST", "/workers", add)                # never through the predict port
        assert status == 404, raw
        status, raw = c.request("POST", "/workers", add, plane="manage")
        assert status in (200, 202), raw
        ws = c.wait_workers(lambda ws: any(w["url"] == third.base_url and w["is_healthy"] for w in ws))
        worker_id = next(w["id"] for w in ws if w["url"] == third.base_url)
        client = c.openai_client()
        before = requests_received(third)
        for i in range(9):
            client.chat.completions.create(**chat_body(a.model_name, f"Add {i}", max_tokens=2))
        assert requests_received(third) - before == 3
        status, raw = c.request("DELETE", f"/workers/{worker_id}", plane="manage")
        assert status in (200, 202), raw
        c.wait_workers(lambda ws: all(w["url"] != third.base_url for w in ws))
        before = counters(a, b, third)
        for i in range(9):
            client.chat.completions.create(**chat_body(a.model_name, f"Removed {i}", max_tokens=2))
        got = [x - y for x, y in zip(counters(a, b, third), before)]
        assert got[2] == 0 and got[0] + got[1] == 9, got
    finally:
        third.stop()


def test_a_world_size_2_instance_behind_the_coordinator(tmp_path_factory, tiny_model, daemons):
    """A tensor-parallel instance (worldSize 2: the daemon and one worker process, gloo on the CPU) is one more
    instance to the gateway."""
    a, _ = daemons
    tp = new_shared_daemon(tmp_path_factory.mktemp("home_tp"), tiny_model("qwen2"), certs_from=a,
                           model={"worldSize": 2, "device": "cpu", "tpHeartbeatTimeout": 5, "npuMemSize": 0.05},
                           backend={"npuDeviceIds": [[0, 1]]}, env={"MINDIE_LIKE_NO_PROGRESS": "1"}).start()
    try:
        c = start_coordinator(tmp_path_factory.mktemp("coord_tp"), a, [a.base_url, tp.base_url],
                              algorithm="round_robin")
        try:
            c.wait_workers(lambda ws: len(ws) == 2 and all(w["is_healthy"] for w in ws))
            body = chat_body(a.model_name, "Count to five.", max_tokens=16)
            direct = a.openai_client().chat.completions.create(**body).choices[0].message.content
            before = requests_received(tp)
            for _ in range(4):
                assert c.openai_client().chat.completions.create(**body).choices[0].message.content == direct
            assert requests_received(tp) - before == 2
        finally:
            c.stop()
    finally:
        tp.stop()


async def _stream(client, model: str, first_chunk: asyncio.Event, max_tokens: int) -> dict:
    """Reads a stream to its end: what ended it and when."""
    out = {"chunks": 0, "finish_reason": None, "error": None, "ended_at": None}
    try:
        stream = await client.chat.completions.create(
            model=model, stream=True, temperature=0, max_tokens=max_tokens,
            messages=[{"role": "user", "content": "Write a very long story about a lighthouse."}])
        async for ch in stream:
            out["chunks"] += 1
            first_chunk.set()
            if ch.choices and ch.choices[0].finish_reason:
                out["finish_reason"] = ch.choices[0].finish_reason
    except Exception as e:             # the openai client's error for an error event or a broken stream
        out["error"] = f"{type(e).__name__}: {e}"
    out["ended_at"] = time.monotonic()
    first_chunk.set()
    return out


def test_sigterm_drains_a_stream_in_flight(tmp_path_factory, daemons):
    a, _ = daemons
    c = start_coordinator(tmp_path_factory.mktemp("coord_term"), a, [a.base_url], algorithm="round_robin")
    try:
        c.wait_workers(lambda ws: len(ws) == 1 and ws[0]["is_healthy"])
    except BaseException:
        c.stop()
        raise

    async def run():
        first = asyncio.Event()
        task = asyncio.create_task(_stream(c.openai_client(async_client=True), a.model_name, first, 64))
        await asyncio.wait_for(first.wait(), 60)
        c.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(task, 60)

    out = asyncio.run(run())
    assert out["error"] is None and out["finish_reason"] in ("length", "stop"), out
    assert c.proc.wait(timeout=60) == 0


def test_a_killed_instance_is_taken_out_while_requests_keep_being_served(daemons, coordinator):
    """Last in the module: it kills one of the two daemons."""
    a, b = daemons
    c = coordinator

    async def run():
        client = c.openai_client(async_client=True)
        firsts = [asyncio.Event(), asyncio.Event()]
        before = counters(a, b)
        t0 = asyncio.create_task(_stream(client, a.model_name, firsts[0], 1500))
        await asyncio.wait_for(firsts[0].wait(), 60)
        t1 = asyncio.create_task(_stream(client, a.model_name, firsts[1], 1500))
        await asyncio.wait_for(firsts[1].wait(), 60)
        got = [x - y for x, y in zip(counters(a, b), before)]
        assert got == [1, 1], got                       # round robin: one stream on each instance
        b.proc.kill()                                    # SIGKILL: no drain, connections drop
        killed_at = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(t0, t1), 120)
        return killed_at, results

    killed_at, results = asyncio.run(run())
    ended_early = [r for r in results if r["error"] is not None or r["finish_reason"] is None]
    # the stream on the killed instance ends, within the bound, with an error the client raises or an error event;
    # the one on the surviving instance runs to its end
    assert len(ended_early) == 1, results
    assert [r["finish_reason"] for r in results if r not in ended_early][0] in ("length", "stop"), results
    for r in ended_early:
        assert r["ended_at"] - killed_at < STREAM_BOUND_S, r
        print(f"stream on the killed instance ended {r['ended_at'] - killed_at:.1f}s after the kill: "
              f"{r['error'] or 'closed without a finish_reason'} after {r['chunks']} chunks")
    client = c.openai_client()
    before = requests_received(a)
    for i in range(6):
        r = client.chat.completions.create(**chat_body(a.model_name, f"After {i}", max_tokens=2))
        assert r.choices[0].finish_reason in ("length", "stop")
    assert requests_received(a) - before == 6
    c.wait_workers(lambda ws: [w["url"] for w in ws if w["is_healthy"]] == [a.base_url], timeout=60)
