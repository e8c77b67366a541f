"""Load, soak and faults against the real daemon over mutual TLS, driven by benchmarks/loadgen.py.

One daemon (tiny random qwen2 model) carries the load, soak, disconnect and failing-step tests; the timeout,
full-queue and SIGTERM tests get daemons of their own config. Every daemon here runs under
tests/e2e/fault_daemon.py, a wrapper that patches the engine's forward-step seam from outside and then runs the
unchanged daemon: with no fault file present it is the plain daemon; the tests create files to slow every step
or make one step raise. Every scenario ends by checking that all KV blocks are free again (/v1/status) and, where
the daemon lives on, that it still answers.

The soak test has two sizes, one code path:
- `ci` (default suite): 16 concurrent clients for MINDIE_LIKE_SOAK_CI_SECONDS (15) after a short warm-up;
- `full` (opt-in marker `soak`: `bin/run_tests -m soak`): 64 concurrent clients for MINDIE_LIKE_SOAK_SECONDS
  (600), the issue's size.
Both: 3/4 streaming and 1/4 plain requests, half with tools, greedy. Checked: no failed request (client side, and
the daemon's own request_failed counter); the daemon's resident memory after the run is less than 10% above what
it was after warm-up; open file descriptors and OS threads are back to their post-warm-up counts once the
clients are gone; every KV block is free at the end. Asyncio tasks are not visible from outside the process (no
metric exposes them); the fd and thread counts and the KV blocks are what a leaked request would hold.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import aiohttp
import pytest

from benchmarks.loadgen import (PROMPTS, LoadConfig, LoadResult, RequestRecord, chat_messages, client_ssl_context,
                                one_request, require_loopback, run_load)

from .fault_daemon import INJECTED, FaultControl
from .load_helpers import (SMALL_KV, engine_status, load_config, metric_value, open_fds, rss_bytes, threads,
                           wait_all_blocks_free, wait_status)

TIMEOUT_BODY = {"error": "Engine callback timeout", "error_type": "Incomplete Generation"}
SOAK_SIZES = {"ci": (16, float(os.environ.get("MINDIE_LIKE_SOAK_CI_SECONDS", 8))),
              "full": (64, float(os.environ.get("MINDIE_LIKE_SOAK_SECONDS", 600)))}


CONTROLS: list[FaultControl] = []


def faulty_daemon(daemon_factory, tmp_path_factory, tiny_model, **overrides):
    """A daemon under the fault wrapper (small KV cache), with its FaultControl as `.faults`."""
    control = FaultControl(tmp_path_factory.mktemp("faults"))
    CONTROLS.append(control)
    h = daemon_factory(tiny_model("qwen2"), entry=FaultControl.entry(), env=control.env,
                       model={**SMALL_KV, **overrides.pop("model", {})}, **overrides)
    h.faults = control
    return h


@pytest.fixture(autouse=True)
def reset_faults():
    """No fault outlives the test that set it."""
    yield
    for control in CONTROLS:
        control.set_step_delay(0)
        (control.dir / "fail_next_step").unlink(missing_ok=True)


@pytest.fixture(scope="module")
def fault_daemon(daemon_factory, tmp_path_factory, tiny_model):
    """The module's main daemon: the default config with a small KV cache and a 4 s shutdownGracePeriod; faults
    only when a test asks. test_sigterm_under_load, the last test, stops it."""
    return faulty_daemon(daemon_factory, tmp_path_factory, tiny_model, server={"shutdownGracePeriod": 4})


class Clients:
    """Concurrent chat requests through loadgen.one_request on one aiohttp session (inside asyncio.run)."""

    def __init__(self, cfg: LoadConfig):
        self.cfg = cfg
        self.t0 = time.perf_counter()

    async def __aenter__(self):
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl_context(self.cfg),
                                                                            limit=0))
        return self

    async def __aexit__(self, *exc):
        await self.session.close()

    def start(self, index: int, *, stream: bool, max_tokens: int, tools: bool = False, ignore_eos: bool = True,
              rec: RequestRecord = None) -> asyncio.Task:
        cfg = LoadConfig(**{**self.cfg.__dict__, "max_tokens": max_tokens, "ignore_eos": ignore_eos})
        return asyncio.create_task(one_request(self.session, cfg, index, stream=stream, tools=tools, run_t0=self.t0,
                                               rec=rec))


async def until(h, pred, timeout: float = 60.0) -> dict:
    return await asyncio.to_thread(wait_status, h, pred, timeout)


def assert_serves(h) -> RequestRecord:
    """One more request gets a complete answer, and /health says 200."""
    assert h.proc.poll() is None, h.output[-3000:]
    assert h.request("GET", "/health", plane="management")[0] == 200
    cfg = load_config(h, concurrency=1, requests=1, max_tokens=8, ignore_eos=True)
    rec = asyncio.run(run_load(cfg)).records[0]
    assert rec.ok and rec.finish_reason == "length" and rec.completion_tokens == 8, rec
    return rec


# ------------------------------------------------------------------------------------------------ load and soak

def soak_load(h, streams: int, seconds: float, seed: int) -> LoadResult:
    cfg = load_config(h, concurrency=streams, requests=1_000_000, duration=seconds, stream_fraction=0.75,
                      tools_fraction=0.5, max_tokens=48, request_timeout=300, seed=seed)
    return asyncio.run(run_load(cfg))


def steady(pid: int, measure, timeout: float = 10.0) -> int:
    """`measure(pid)` once it has not changed for a second (or after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    value, since = measure(pid), time.monotonic()
    while time.monotonic() - since < 1.0 and time.monotonic() < deadline:
        time.sleep(0.2)
        now = measure(pid)
        if now != value:
            value, since = now, time.monotonic()
    return value


def settle(pid: int, baseline: int, measure, timeout: float = 30.0) -> int:
    """The count `measure(pid)` once it is back at `baseline` (connections close asynchronously), or the last
    value seen after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    value = measure(pid)
    while value > baseline and time.monotonic() < deadline:
        time.sleep(0.2)
        value = measure(pid)
    return value


FULL_SOAK = pytest.param("full", marks=[pytest.mark.soak, pytest.mark.timeout(SOAK_SIZES["full"][1] * 2 + 600)])


@pytest.mark.parametrize("size", ["ci", FULL_SOAK])
def test_soak(fault_daemon, size):
    """Clients keep the daemon busy for the whole run: nothing fails, nothing leaks (the module doc)."""
    h = fault_daemon
    pid = h.proc.pid
    streams, seconds = SOAK_SIZES[size]
    failed_before = metric_value(h, "request_failed_total")
    warm = soak_load(h, streams, max(3.0, seconds / 10), seed=1)
    assert not warm.errors, warm.summary()
    wait_all_blocks_free(h)
    rss_warm = rss_bytes(pid)
    fds_idle = steady(pid, open_fds)                  # once the warm-up's connections are closed
    threads_idle = steady(pid, threads)

    result = soak_load(h, streams, seconds, seed=2)
    summary = result.summary()
    assert summary["requests"] > streams and not result.errors, summary
    assert summary["succeeded"] == summary["requests"]
    assert metric_value(h, "request_failed_total") == failed_before
    end = wait_all_blocks_free(h)
    rss_end = rss_bytes(pid)
    fds_end = settle(pid, fds_idle, open_fds)
    threads_end = settle(pid, threads_idle, threads)
    print(f"soak {size}: {streams} clients x {seconds:.0f}s: {summary}; RSS {rss_warm >> 20} -> {rss_end >> 20} MiB, "
          f"fds {fds_idle} -> {fds_end}, threads {threads_idle} -> {threads_end}, KV blocks free "
          f"{end['freeNpuBlockNums']}/{end['totalNpuBlockNums']}")
    assert rss_end < rss_warm * 1.10, (rss_warm, rss_end)
    assert fds_end <= fds_idle
    # asyncio's default executor (chat templates render there) starts its threads lazily, up to its max_workers,
    # so a warm-up that did not need all of them can see one more later: only growth past that bound is a leak
    executor_max = min(32, (os.cpu_count() or 1) + 4)
    assert threads_end <= threads_idle + executor_max, (threads_idle, threads_end)


def test_loadgen_reports_and_refuses_remote_hosts(fault_daemon):
    """The generator's own report on a small mixed run, and its loopback-only rule."""
    h = fault_daemon
    result = asyncio.run(run_load(load_config(h, concurrency=4, requests=12, duration=120, stream_fraction=0.5,
                                              tools_fraction=0.5, max_tokens=16, ignore_eos=True)))
    s = result.summary()
    assert s["requests"] == s["succeeded"] == 12 and s["errors"] == {}
    assert s["output_tokens"] == 12 * 16 and s["token_sources"] == {"usage": 12}
    streamed = [r for r in result.records if r.stream]
    assert streamed and all(r.ttft_s is not None and len(r.chunk_gaps_s) >= 1 for r in streamed)
    assert s["ttft_ms"]["n"] == len(streamed) and s["ttft_ms"]["p50"] <= s["ttft_ms"]["p99"]
    assert s["output_tok_s"] > 0 and s["requests_per_s"] > 0
    for url in ("https://10.0.0.1:1025", "https://8.8.8.8", "ftp://127.0.0.1"):
        with pytest.raises(ValueError):
            require_loopback(url)
    require_loopback("https://localhost:1025")
    require_loopback("http://[::1]:8000")


# ------------------------------------------------------------------------------------------------ disconnects

def test_clients_disconnecting_mid_stream_free_their_blocks_and_others_are_unaffected(fault_daemon):
    """Two loads at once, 16 clients each. One abandons each of its 32 streams after a random 1-8 chunks, of
    requests that would run ~2,500 tokens. The other's 32 requests (streaming and plain, with and without tools,
    32 tokens, greedy) get exactly the answer the same request gets alone, and every KV block is free at the end,
    long before the abandoned requests could have run to their end (50 s at the slowed step)."""
    h = fault_daemon
    control = h.faults
    control.set_step_delay(0.02)          # an abandoned request left running would hold its blocks for 50 s
    base = dict(concurrency=16, requests=32, duration=300, tools_fraction=0.5, max_tokens=32, ignore_eos=True)
    kept = load_config(h, **base, stream_fraction=0.5, seed=7)
    gone = load_config(h, **{**base, "max_tokens": 4000, "disconnect_fraction": 1.0, "seed": 8})

    async def both():
        return await asyncio.gather(run_load(kept), run_load(gone))

    kept_run, gone_run = asyncio.run(both())
    assert all(r.disconnected for r in gone_run.records), gone_run.summary()
    assert not gone_run.errors and len(gone_run.records) == 32, gone_run.summary()
    wait_all_blocks_free(h, timeout=20)
    assert not kept_run.errors and len(kept_run.succeeded) == 32, kept_run.summary()
    control.set_step_delay(0)
    alone = {}
    for rec in kept_run.records:
        key = (rec.index % len(PROMPTS), rec.tools)
        if key not in alone:
            cfg = load_config(h, concurrency=1, requests=1, max_tokens=32, ignore_eos=True,
                              tools_fraction=float(rec.tools), stream_fraction=0.0,
                              messages=lambda _i, k=key[0]: chat_messages(k))
            alone[key] = asyncio.run(run_load(cfg)).records[0]
        ref = alone[key]
        assert rec.finish_reason == ref.finish_reason and rec.completion_tokens == 32
        assert (rec.text, rec.tool_calls) == (ref.text, ref.tool_calls), (rec.index, rec.stream)
    assert_serves(h)


# ------------------------------------------------------------------------------------------------ step failure

def test_an_exception_in_one_forward_step_fails_that_batch_only(fault_daemon):
    """Six requests decode together (four streams, two plain); one forward step raises. The streams get one
    error event then [DONE], the plain ones a 500 body (MindIE's class for an internal error,
    not the request's);
    requests sent
    afterwards are answered, the daemon keeps running and frees every block."""
    h = fault_daemon
    control = h.faults
    control.set_step_delay(0.05)

    async def scenario():
        async with Clients(load_config(h)) as c:
            watched = [RequestRecord(index=i, stream=i < 4, tools=False) for i in range(6)]
            tasks = [c.start(i, stream=i < 4, max_tokens=400, rec=watched[i]) for i in range(6)]
            await until(h, lambda r: r["runningRequestNum"] == 6 and r["waitingRequestNum"] == 0)
            while not all(r.ttft_s is not None for r in watched[:4]):    # every stream has started
                await asyncio.sleep(0.01)
            control.fail_next_step()
            return await asyncio.gather(*tasks)

    records = asyncio.run(scenario())
    assert not control.failure_pending
    for rec in records:
        if rec.stream:
            assert rec.error_kind == "sse_error", rec
            assert rec.error_detail.startswith("Incomplete Generation: ") and INJECTED in rec.error_detail, rec
            assert rec.ttft_s is not None         # the failure came after the stream had started
        else:
            assert rec.error_kind == "http_500" and rec.error_detail.startswith("Incomplete Generation: "), rec
            assert INJECTED in rec.error_detail
    wait_all_blocks_free(h)
    control.set_step_delay(0)
    assert_serves(h)
    assert "engine step failed; failing its 6 requests" in h.output


# ------------------------------------------------------------------------------------------------ timeouts

@pytest.fixture(scope="module")
def timeout_daemon(daemon_factory, tmp_path_factory, tiny_model):
    return faulty_daemon(daemon_factory, tmp_path_factory, tiny_model, server={"tokenTimeout": 2, "e2eTimeout": 6})


def test_token_timeout_before_the_first_token(timeout_daemon):
    """Steps slower than tokenTimeout (2 s): plain and streaming requests both get 500 "Engine callback timeout"
    before any byte of an answer, and the request is aborted in the engine."""
    h = timeout_daemon
    control = h.faults
    control.set_step_delay(3.0)

    async def scenario():
        async with Clients(load_config(h)) as c:
            return await asyncio.gather(c.start(0, stream=False, max_tokens=4), c.start(1, stream=True, max_tokens=4))

    for rec in asyncio.run(scenario()):
        assert rec.error_kind == "http_500", rec
        assert rec.error_detail == "Incomplete Generation: Engine callback timeout", rec
    control.set_step_delay(0)
    wait_all_blocks_free(h)
    assert_serves(h)


def test_token_timeout_mid_stream(timeout_daemon):
    """A stream that got tokens, then its steps slow past tokenTimeout: one error event, [DONE], blocks freed."""
    h = timeout_daemon
    control = h.faults

    async def scenario():
        async with Clients(load_config(h)) as c:
            session, cfg = c.session, load_config(h)
            body = {"model": h.model_name, "messages": chat_messages(0), "max_tokens": 300, "ignore_eos": True,
                    "stream": True}
            events = []
            async with session.post(cfg.url + "/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
                async for line in resp.content:
                    if line.startswith(b"data: "):
                        events.append(line[6:].strip())
                        if len(events) == 3:
                            control.set_step_delay(3.0)
            return events

    events = asyncio.run(scenario())
    assert events[-1] == b"[DONE]"
    assert json.loads(events[-2]) == TIMEOUT_BODY
    assert all("choices" in json.loads(e) for e in events[:-2])
    control.set_step_delay(0)
    wait_all_blocks_free(h)


def test_e2e_timeout(timeout_daemon):
    """Tokens keep coming (0.3 s apart, under tokenTimeout) but the request outlives e2eTimeout (6 s): the stream
    ends with the timeout error event, the plain request gets a 500 body, blocks are freed."""
    h = timeout_daemon
    control = h.faults
    control.set_step_delay(0.3)

    async def scenario():
        async with Clients(load_config(h)) as c:
            return await asyncio.gather(c.start(0, stream=True, max_tokens=200),
                                        c.start(1, stream=False, max_tokens=200))

    streamed, plain = asyncio.run(scenario())
    assert streamed.error_kind == "sse_error" and streamed.ttft_s is not None, streamed
    assert streamed.error_detail == "Incomplete Generation: Engine callback timeout"
    assert len(streamed.chunk_gaps_s) >= 3            # it was streaming tokens when the deadline hit
    assert plain.error_kind == "http_500" and plain.error_detail == "Incomplete Generation: Engine callback timeout"
    control.set_step_delay(0)
    wait_all_blocks_free(h)
    assert_serves(h)


# ------------------------------------------------------------------------------------------------ full queue

@pytest.fixture(scope="module")
def small_queue_daemon(daemon_factory, tmp_path_factory, tiny_model):
    return faulty_daemon(daemon_factory, tmp_path_factory, tiny_model,
                         schedule={"maxBatchSize": 2, "maxPrefillBatchSize": 2, "maxQueueSize": 2})


def test_a_burst_that_fits_batch_and_queue_is_admitted(small_queue_daemon):
    """maxBatchSize 2 and maxQueueSize 2: four requests sent at the same moment (none running yet) all fit and
    complete; none is refused with 503."""
    h = small_queue_daemon
    h.faults.set_step_delay(0.1)

    async def scenario():
        async with Clients(load_config(h, request_timeout=120)) as c:
            return await asyncio.gather(*(c.start(i, stream=bool(i % 2), max_tokens=8) for i in range(4)))

    try:
        records = asyncio.run(scenario())
    finally:
        h.faults.set_step_delay(0)
    assert all(r.ok and r.completion_tokens == 8 for r in records), records
    wait_all_blocks_free(h)


def test_a_full_queue_answers_503_at_once(small_queue_daemon):
    """maxBatchSize 2 and maxQueueSize 2, slow steps: two requests run, two wait, the fifth (plain or streaming)
    gets 503 with the MindIE body instead of hanging; the four admitted ones complete."""
    h = small_queue_daemon
    control = h.faults
    control.set_step_delay(0.1)

    async def scenario():
        async with Clients(load_config(h, request_timeout=120)) as c:
            admitted = [c.start(i, stream=bool(i % 2), max_tokens=30) for i in range(2)]
            await until(h, lambda r: r["runningRequestNum"] == 2)
            admitted += [c.start(i, stream=bool(i % 2), max_tokens=30) for i in range(2, 4)]
            await until(h, lambda r: r["waitingRequestNum"] == 2)
            refused = await asyncio.gather(c.start(4, stream=False, max_tokens=4),
                                           c.start(5, stream=True, max_tokens=4))
            st = engine_status(h)
            return refused, st, await asyncio.gather(*admitted)

    refused, during, admitted = asyncio.run(scenario())
    for rec in refused:
        assert rec.error_kind == "http_503", rec
        assert rec.error_detail == "Service Unavailable: Service Unavailable: the waiting queue is full (2 requests)"
    assert during["runningRequestNum"] == 2 and during["waitingRequestNum"] == 2   # refused while all were busy
    assert all(r.ok and r.completion_tokens == 30 for r in admitted), admitted
    control.set_step_delay(0)
    wait_all_blocks_free(h)
    assert_serves(h)


# ------------------------------------------------------------------------------------------------ SIGTERM

def test_sigterm_under_load(fault_daemon):
    """SIGTERM with 12 requests in flight (streaming and plain, short and long) and slow steps: the short ones get
    their whole answer within shutdownGracePeriod (4 s); the long ones, still running when it ends, get a clean
    503 (an error event then [DONE] on a stream, the MindIE body otherwise), never a cut connection; a new request
    is refused; the process exits 0 soon after the grace period.

    Last in this module: it stops the module's main daemon (one daemon start less in the default suite)."""
    h = fault_daemon
    h.faults.set_step_delay(0.1)

    async def scenario():
        async with Clients(load_config(h, request_timeout=120)) as c:
            tasks = [c.start(i, stream=i % 2 == 0, max_tokens=8 if i < 6 else 1000) for i in range(12)]
            await until(h, lambda r: r["runningRequestNum"] == 12)
            h.proc.send_signal(signal.SIGTERM)
            t_signal = time.monotonic()
            for _ in range(100):                   # until the signal is handled: a new client is turned away
                probe = (await run_load(load_config(h, concurrency=1, requests=1, max_tokens=1))).records[0]
                if not probe.ok:
                    break
                await asyncio.sleep(0.02)
            return await asyncio.gather(*tasks), probe, t_signal

    records, probe, t_signal = asyncio.run(scenario())
    code = h.proc.wait(timeout=60)
    exited_after = time.monotonic() - t_signal
    assert probe.error_kind.startswith("connection:") or probe.error_kind == "http_503", probe
    short, long_ = records[:6], records[6:]
    assert all(r.ok and r.finish_reason == "length" and r.completion_tokens == 8 for r in short), short
    for rec in long_:
        if rec.stream:
            assert rec.error_kind == "sse_error" and rec.ttft_s is not None, rec
        else:
            assert rec.error_kind == "http_503", rec
        assert rec.error_detail.startswith("Service Unavailable: "), rec
    assert code == 0, h.output[-3000:]
    assert exited_after < 4 + 30, exited_after       # grace period + aiohttp's and the engine's wind-down, not a hang
    assert "grace period over: cancelling 6 request(s)" in h.output
