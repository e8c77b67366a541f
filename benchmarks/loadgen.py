"""A bounded load generator for OpenAI-style chat servers on this machine (mutual TLS or plain HTTP, loopback only).

    python -m benchmarks.loadgen --url https://127.0.0.1:1025 --ca security/ca/ca.pem \\
        --cert security/client/client.pem --key security/client/client.key.pem --model NAME \\
        --concurrency 16 --requests 200 --duration 60 [--stream | --no-stream | --mix-stream] [--tools | --mix-tools]

From code (tests/e2e, benchmarks/serve_bench.py): `result = await run_load(LoadConfig(...))` or
`run(LoadConfig(...))`; `result.summary()` is the report, `result.records` one RequestRecord per request.

Bounds: at most `requests` requests and no new request after `duration` seconds; each request is cut off after
`request_timeout` seconds (an error of kind "timeout"). Hosts must resolve to loopback addresses only.

What is measured (wall clock of this process, `time.perf_counter`):
- a "token" is a completion token as the server counts it: `usage.completion_tokens` (non-streaming answers, and
  streams that asked `stream_options.include_usage`). A server that sends no usage in its stream (llama-cpp-python)
  gets its tokens counted by `count_tokens(text)` when given (the model's tokenizer on the generated text and tool
  call arguments), else one per chunk that carries output; RequestRecord.token_source says which.
- TTFT: from just before the request is sent to the first SSE event with a choice in it (streams only). Our
  daemon and llama-cpp-python both send that event (the assistant role) once the first token exists, not
  before. "first output" is the first event that carries text, reasoning or a tool-call delta, summarized also
  per kind of that first output (`first_output_ms_by_kind`: content / reasoning / tool_call). Later than TTFT
  when the server holds text back: our daemon sends a tool call (a ```json block or a bare `{"name": ...}` object
  included) only once it is one, its header at the token that starts the arguments, while a server that does
  not parse such calls streams the same JSON as text at once.
- ITL (inter-token latency): the gaps between successive output-carrying events of a stream (one event may carry
  more than one token when the server holds text back); TPOT per request = (last output event - TTFT) /
  (tokens - 1).
- output tok/s = all completion tokens of successful requests / wall time of the run (first send to last answer);
  requests/s = successful requests / the same wall time.
- errors by kind: `http_<status>` (the response status, with the body's error_type), `sse_error` (an error event in
  a started stream, with its error_type), `timeout`, `connection:<exception>`, `incomplete` (the stream ended
  without [DONE] or without a finish_reason), `bad_response` (a body or event that is not the OpenAI shape). A
  request the generator itself abandons on purpose (`disconnect_fraction`) is counted as "disconnected", not as an
  error.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import random
import socket
import ssl
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional
from urllib.parse import urlsplit

import aiohttp

MAX_CONCURRENCY = 1024
MAX_REQUESTS = 1_000_000
MAX_DURATION_S = 24 * 3600

WEATHER_TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "get_delivery_date", "description": "Delivery date of a customer's order",
        "parameters": {"type": "object", "properties": {
            "order_id": {"type": "string", "description": "The customer's order ID."}},
            "required": ["order_id"]}}},
]

PROMPTS = [
    "What's the weather like in Paris today?",
    "Hi, can you tell me the delivery date for my order? My order number is 999888.",
    "Write a Python function that checks whether a string is a palindrome.",
    "Explain in two sentences what a hash map is.",
    "Is it going to rain in Tokyo? Answer in fahrenheit.",
    "List three differences between TCP and UDP.",
    "Write a SQL query that returns the ten most recent orders.",
    "What is the weather in Berlin and in Madrid?",
]


def chat_messages(i: int) -> list[dict]:
    """The i-th prompt of the built-in set, as chat messages."""
    return [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]


@dataclass
class LoadConfig:
    url: str                                  # https://127.0.0.1:PORT or http://127.0.0.1:PORT (no mTLS)
    model: str
    ca: Optional[str] = None                  # https: the CA file the server certificate is checked against
    cert: Optional[str] = None                # https: the client certificate (mutual TLS) ...
    key: Optional[str] = None                 # ... and its key
    concurrency: int = 4
    requests: int = 100                       # at most this many requests ...
    duration: float = 60.0                    # ... and none started after this many seconds
    stream_fraction: float = 1.0              # share of streaming requests (1 = all, 0 = none)
    tools_fraction: float = 0.0               # share of requests that carry `tools`
    max_tokens: int = 64
    temperature: float = 0.0                  # greedy by default: answers are reproducible
    ignore_eos: bool = False                  # our daemon and vLLM honour it; others ignore the unknown key
    request_timeout: float = 300.0
    disconnect_fraction: float = 0.0          # share of streams the client abandons after a random chunk count
    disconnect_max_chunks: int = 8            # an abandoned stream reads 1..this many chunks first
    seed: int = 0
    messages: Optional[Callable[[int], list[dict]]] = None   # request index -> messages (default: chat_messages)
    count_tokens: Optional[Callable[[str], int]] = None       # for streams without usage (see the module doc)
    keepalive: bool = True                    # reuse connections; off for servers that close them after a stream

    def check(self) -> None:
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"concurrency: {self.concurrency} is not in [1, {MAX_CONCURRENCY}]")
        if not 1 <= self.requests <= MAX_REQUESTS:
            raise ValueError(f"requests: {self.requests} is not in [1, {MAX_REQUESTS}]")
        if not 0 < self.duration <= MAX_DURATION_S:
            raise ValueError(f"duration: {self.duration} is not in (0, {MAX_DURATION_S}] seconds")
        if not 0 < self.request_timeout <= MAX_DURATION_S:
            raise ValueError(f"request_timeout: {self.request_timeout} is not in (0, {MAX_DURATION_S}] seconds")
        for name in ("stream_fraction", "tools_fraction", "disconnect_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: {getattr(self, name)} is not in [0, 1]")
        require_loopback(self.url)


def require_loopback(url: str) -> None:
    """Refuses a URL whose host does not resolve to loopback addresses only (this tool loads local servers)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url: {url!r} is not an http(s) URL with a host")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except socket.gaierror as e:
        raise ValueError(f"url: cannot resolve {parts.hostname!r} ({e})") from None
    addrs = {info[4][0] for info in infos}
    far = sorted(a for a in addrs if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if far:
        raise ValueError(f"url: {parts.hostname!r} resolves to non-loopback address(es) {far}: loopback only")


@dataclass
class RequestRecord:
    index: int
    stream: bool
    tools: bool
    ok: bool = False
    error_kind: Optional[str] = None          # see the module doc; None when ok or disconnected
    error_detail: str = ""
    status: Optional[int] = None
    disconnected: bool = False                # abandoned on purpose by the generator
    start_s: float = 0.0                      # since the run started
    e2e_s: Optional[float] = None
    ttft_s: Optional[float] = None
    first_output_s: Optional[float] = None
    first_output_kind: Optional[str] = None   # what the first output event carried: content | reasoning | tool_call
    last_output_s: Optional[float] = None
    chunk_gaps_s: list = field(default_factory=list)
    completion_tokens: int = 0
    prompt_tokens: Optional[int] = None
    token_source: str = "usage"               # "usage" | "tokenizer" | "chunks"
    finish_reason: Optional[str] = None
    text: str = ""
    tool_calls: list = field(default_factory=list)   # [{"name", "arguments"}] as received

    @property
    def tpot_s(self) -> Optional[float]:
        if self.ttft_s is None or self.last_output_s is None or self.completion_tokens < 2:
            return None
        return (self.last_output_s - self.ttft_s) / (self.completion_tokens - 1)


def percentile(values: list[float], q: float) -> Optional[float]:
    """The q-th percentile, linear between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    v = sorted(values)
    pos = (len(v) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


@dataclass
class LoadResult:
    config: dict
    wall_s: float
    records: list[RequestRecord]

    @property
    def succeeded(self) -> list[RequestRecord]:
        return [r for r in self.records if r.ok]

    @property
    def errors(self) -> Counter:
        return Counter(r.error_kind for r in self.records if r.error_kind)

    def summary(self) -> dict:
        ok = self.succeeded
        ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
        first_out = [r.first_output_s for r in ok if r.first_output_s is not None]
        by_kind: dict[str, list[float]] = {}
        for r in ok:
            if r.first_output_s is not None:
                by_kind.setdefault(r.first_output_kind or "?", []).append(r.first_output_s)
        gaps = [g for r in ok for g in r.chunk_gaps_s]
        tpot = [r.tpot_s for r in ok if r.tpot_s is not None]
        e2e = [r.e2e_s for r in ok if r.e2e_s is not None]
        tokens = sum(r.completion_tokens for r in ok)
        ms = lambda v: None if v is None else round(v * 1000, 2)   # noqa: E731
        wall = max(self.wall_s, 1e-9)
        return {
            "requests": len(self.records), "succeeded": len(ok),
            "disconnected": sum(r.disconnected for r in self.records),
            "errors": dict(self.errors), "wall_s": round(self.wall_s, 3),
            "output_tokens": tokens, "output_tok_s": round(tokens / wall, 2),
            "requests_per_s": round(len(ok) / wall, 3),
            "ttft_ms": {"p50": ms(percentile(ttft, 50)), "p99": ms(percentile(ttft, 99)), "n": len(ttft)},
            "first_output_ms": {"p50": ms(percentile(first_out, 50)), "p99": ms(percentile(first_out, 99))},
            "first_output_ms_by_kind": {k: {"p50": ms(percentile(v, 50)), "n": len(v)}
                                        for k, v in sorted(by_kind.items())},
            "itl_ms": {"p50": ms(percentile(gaps, 50)), "p99": ms(percentile(gaps, 99)), "n": len(gaps)},
            "tpot_ms": {"p50": ms(percentile(tpot, 50)), "p99": ms(percentile(tpot, 99))},
            "e2e_ms": {"p50": ms(percentile(e2e, 50)), "p99": ms(percentile(e2e, 99))},
            "token_sources": dict(Counter(r.token_source for r in ok)),
        }

    def to_dict(self, with_records: bool = False) -> dict:
        cfg = {k: v for k, v in self.config.items() if not callable(v)}
        out = {"config": cfg, "summary": self.summary()}
        if with_records:
            out["records"] = [asdict(r) for r in self.records]
        return out


def client_ssl_context(cfg: LoadConfig) -> Optional[ssl.SSLContext]:
    if urlsplit(cfg.url).scheme != "https":
        return None
    ctx = ssl.create_default_context(cafile=cfg.ca)
    if cfg.cert:
        ctx.load_cert_chain(cfg.cert, cfg.key)
    return ctx


def request_body(cfg: LoadConfig, index: int, stream: bool, tools: bool) -> dict:
    body = {"model": cfg.model, "messages": (cfg.messages or chat_messages)(index), "max_tokens": cfg.max_tokens,
            "temperature": cfg.temperature, "stream": stream}
    if cfg.ignore_eos:
        body["ignore_eos"] = True
    if tools:
        body["tools"] = WEATHER_TOOLS
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def _error_type(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw[:200].decode("utf-8", "replace")
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(body, dict) and "error_type" in body:
        return f"{body['error_type']}: {err}"
    if isinstance(err, dict):
        return f"{err.get('type')}: {err.get('message')}"
    return str(body)[:200]


def _absorb_delta(rec: RequestRecord, choice: dict, calls: dict) -> str:
    """Adds a chunk's delta to the record; what output it carried ("content", "reasoning", "tool_call"), or ""."""
    delta = choice.get("delta") or {}
    got = ""
    for key in ("content", "reasoning_content"):
        if delta.get(key):
            got = got or key.split("_")[0]
            if key == "content":
                rec.text += delta[key]
    for tc in delta.get("tool_calls") or ():
        got = got or "tool_call"
        slot = calls.setdefault(tc.get("index", 0), {"name": "", "arguments": ""})
        fn = tc.get("function") or {}
        slot["name"] += fn.get("name") or ""
        slot["arguments"] += fn.get("arguments") or ""
    if choice.get("finish_reason"):
        rec.finish_reason = choice["finish_reason"]
    return got


async def _read_stream(resp: aiohttp.ClientResponse, rec: RequestRecord, t0: float,
                       stop_after: Optional[int], count_tokens) -> None:
    calls: dict = {}
    last = None
    chunks = 0
    done = False
    usage = None
    async for raw in resp.content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            done = True
            break
        obj = json.loads(payload)
        if "error" in obj:
            rec.error_kind = "sse_error"
            rec.error_detail = _error_type(payload)
            continue
        if obj.get("usage"):
            usage = obj["usage"]
        carried = ""
        for choice in obj.get("choices") or ():
            carried = _absorb_delta(rec, choice, calls) or carried
        now = time.perf_counter()
        if rec.ttft_s is None and obj.get("choices"):
            rec.ttft_s = now - t0
        if carried:
            chunks += 1
            if last is None:
                rec.first_output_s = now - t0
                rec.first_output_kind = carried
            else:
                rec.chunk_gaps_s.append(now - last)
            rec.last_output_s = now - t0
            last = now
            if stop_after is not None and chunks >= stop_after:
                rec.disconnected = True
                return                      # the caller closes the connection mid-stream
    rec.tool_calls = [calls[k] for k in sorted(calls)]
    if rec.error_kind:
        return
    if not done or rec.finish_reason is None:
        rec.error_kind, rec.error_detail = "incomplete", f"[DONE] {'seen' if done else 'missing'}, " \
                                                         f"finish_reason {rec.finish_reason}"
        return
    if usage is not None:
        rec.completion_tokens, rec.prompt_tokens = int(usage["completion_tokens"]), usage.get("prompt_tokens")
    elif count_tokens is not None:
        rec.token_source = "tokenizer"
        rec.completion_tokens = count_tokens(rec.text + "".join(c["name"] + c["arguments"]
                                                                for c in rec.tool_calls))
    else:
        rec.token_source, rec.completion_tokens = "chunks", chunks
    rec.ok = True


async def one_request(session: aiohttp.ClientSession, cfg: LoadConfig, index: int, *, stream: bool, tools: bool,
                      run_t0: float, stop_after: Optional[int] = None,
                      rec: Optional[RequestRecord] = None) -> RequestRecord:
    """One chat request; fills and returns `rec` (pass one in to watch a request's progress while it runs)."""
    rec = rec or RequestRecord(index=index, stream=stream, tools=tools)
    body = request_body(cfg, index, stream, tools)
    t0 = time.perf_counter()
    rec.start_s = t0 - run_t0
    try:
        async with asyncio.timeout(cfg.request_timeout):
            async with session.post(cfg.url.rstrip("/") + "/v1/chat/completions", json=body) as resp:
                rec.status = resp.status
                if resp.status != 200:
                    rec.error_kind = f"http_{resp.status}"
                    rec.error_detail = _error_type(await resp.read())
                elif stream:
                    await _read_stream(resp, rec, t0, stop_after, cfg.count_tokens)
                    if rec.disconnected:
                        resp.close()        # drop the connection: the server sees the client go away
                else:
                    answer = await resp.json(content_type=None)
                    choice = answer["choices"][0]
                    msg = choice.get("message") or {}
                    rec.text = msg.get("content") or ""
                    rec.tool_calls = [{"name": tc["function"]["name"], "arguments": tc["function"]["arguments"]}
                                      for tc in msg.get("tool_calls") or ()]
                    rec.finish_reason = choice.get("finish_reason")
                    rec.completion_tokens = int(answer["usage"]["completion_tokens"])
                    rec.prompt_tokens = answer["usage"].get("prompt_tokens")
                    rec.ok = True
    except TimeoutError:
        rec.error_kind, rec.error_detail = "timeout", f"no complete answer within {cfg.request_timeout}s"
    except (aiohttp.ClientError, OSError) as e:
        rec.error_kind, rec.error_detail = f"connection:{type(e).__name__}", str(e)[:300]
    except (ValueError, KeyError, TypeError) as e:   # not JSON, or not the OpenAI shape
        rec.error_kind, rec.error_detail = "bad_response", f"{type(e).__name__}: {e}"[:300]
    rec.e2e_s = time.perf_counter() - t0
    if rec.disconnected:
        rec.ok, rec.error_kind = False, None
    return rec


async def run_load(cfg: LoadConfig) -> LoadResult:
    cfg.check()
    rng = random.Random(cfg.seed)
    plan = []
    for i in range(cfg.requests):
        stream = rng.random() < cfg.stream_fraction
        tools = rng.random() < cfg.tools_fraction
        stop_after = (rng.randint(1, cfg.disconnect_max_chunks)
                      if stream and rng.random() < cfg.disconnect_fraction else None)
        plan.append((i, stream, tools, stop_after))
    records: list[RequestRecord] = []
    next_index = 0
    connector = aiohttp.TCPConnector(ssl=client_ssl_context(cfg) or False, limit=cfg.concurrency,
                                     force_close=not cfg.keepalive)
    t0 = time.perf_counter()
    deadline = t0 + cfg.duration
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=None, sock_connect=30)) as session:
        async def worker():
            nonlocal next_index
            while next_index < len(plan) and time.perf_counter() < deadline:
                i, stream, tools, stop_after = plan[next_index]
                next_index += 1
                records.append(await one_request(session, cfg, i, stream=stream, tools=tools, run_t0=t0,
                                                 stop_after=stop_after))

        await asyncio.gather(*(worker() for _ in range(cfg.concurrency)))
    wall = time.perf_counter() - t0
    records.sort(key=lambda r: r.index)
    return LoadResult(config=asdict(cfg) | {"messages": None, "count_tokens": None}, wall_s=wall, records=records)


def run(cfg: LoadConfig) -> LoadResult:
    return asyncio.run(run_load(cfg))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="https://127.0.0.1:PORT (mutual TLS) or http://... (loopback)")
    p.add_argument("--model", required=True, help="the model name the server expects")
    p.add_argument("--ca", help="CA file for the server certificate (https)")
    p.add_argument("--cert", help="client certificate (https)")
    p.add_argument("--key", help="client key (https)")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--requests", type=int, default=100, help="at most this many requests")
    p.add_argument("--duration", type=float, default=60.0, help="no new request after this many seconds")
    s = p.add_mutually_exclusive_group()
    s.add_argument("--stream", dest="stream_fraction", action="store_const", const=1.0, help="all streaming")
    s.add_argument("--no-stream", dest="stream_fraction", action="store_const", const=0.0, help="none streaming")
    s.add_argument("--mix-stream", dest="stream_fraction", action="store_const", const=0.5, help="half and half")
    t = p.add_mutually_exclusive_group()
    t.add_argument("--tools", dest="tools_fraction", action="store_const", const=1.0, help="every request has tools")
    t.add_argument("--mix-tools", dest="tools_fraction", action="store_const", const=0.5, help="half of them")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--ignore-eos", action="store_true", help="ask for exactly max_tokens tokens (our daemon)")
    p.add_argument("--request-timeout", type=float, default=300.0)
    p.add_argument("--disconnect-fraction", type=float, default=0.0,
                   help="share of streams abandoned after a random number of chunks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the summary and every request record to this file")
    p.set_defaults(stream_fraction=1.0, tools_fraction=0.0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    cfg = LoadConfig(url=a.url, model=a.model, ca=a.ca, cert=a.cert, key=a.key, concurrency=a.concurrency,
                     requests=a.requests, duration=a.duration, stream_fraction=a.stream_fraction,
                     tools_fraction=a.tools_fraction, max_tokens=a.max_tokens, ignore_eos=a.ignore_eos,
                     request_timeout=a.request_timeout, disconnect_fraction=a.disconnect_fraction, seed=a.seed)
    try:
        result = run(cfg)
    except ValueError as e:
        print(f"loadgen: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result.summary(), indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result.to_dict(with_records=True), f, indent=1)
    return 0 if not result.errors else 1


if __name__ == "__main__":
    sys.exit(main())
