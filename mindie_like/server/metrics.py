"""Prometheus metrics with MindIE's names, label `model_name`, in a registry of the daemon's own.

The chat route reports through a `Metrics` object (ctx.metrics):
    m.request_received(); m.request_success(); m.request_failed()
    m.add_tokens(prompt=n, generation=k)
    m.observe_ttft(seconds); m.observe_token_time(seconds); m.observe_e2e(seconds)
The engine thread reports each step's seconds (`observe_engine_step`, engine_step_seconds{phase="decode"|
"prefill"}), so streamed inter-token latency can be compared with the engine's own step in the same process.
Gauges (num_requests_running, num_requests_waiting, npu_cache_usage_perc) are refreshed from engine.stats() on
every scrape (`render(stats)`).
"""
from __future__ import annotations

from typing import Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

from ..engine.types import EngineStats

disable_created_metrics()              # no *_created series: MindIE exposes none
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"   # the classic text format (names are plain ASCII)

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
# the engine's own step: fine around one stream's decode step on a CPU (5-100 ms), coarse above
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.0175, 0.02, 0.0225, 0.025, 0.0275, 0.03,
                0.035, 0.04, 0.045, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.125, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0,
                10.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0)


class Metrics:
    def __init__(self, model_name: str, registry: Optional[CollectorRegistry] = None):
        self.model_name = model_name
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r, L = self.registry, ["model_name"]
        self._received = Counter("request_received", "Requests received", L, registry=r)
        self._success = Counter("request_success", "Requests answered successfully", L, registry=r)
        self._failed = Counter("request_failed", "Requests that failed", L, registry=r)
        self._prompt = Counter("prompt_tokens", "Prompt tokens processed", L, registry=r)
        self._generation = Counter("generation_tokens", "Tokens generated", L, registry=r)
        self._running = Gauge("num_requests_running", "Requests running in the engine", L, registry=r)
        self._waiting = Gauge("num_requests_waiting", "Requests waiting in the engine's queue", L, registry=r)
        self._cache = Gauge("npu_cache_usage_perc", "KV cache usage, 1 = 100%", L, registry=r)
        self._ttft = Histogram("time_to_first_token_seconds", "Time to first token", L, buckets=TTFT_BUCKETS,
                               registry=r)
        self._tpot = Histogram("time_per_output_token_seconds", "Time per output token", L,
                               buckets=TPOT_BUCKETS, registry=r)
        self._e2e = Histogram("e2e_request_latency_seconds", "End-to-end request latency", L,
                              buckets=E2E_BUCKETS, registry=r)
        self._step = Histogram("engine_step_seconds", "The engine's own step (schedule, forward, sample, "
                               "detokenize), by phase: decode (one token per sequence) or prefill", L + ["phase"],
                               buckets=STEP_BUCKETS, registry=r)
        # children bound to our one label value (so every series exists from the start)
        lab = dict(model_name=model_name)
        self.received = self._received.labels(**lab)
        self.success = self._success.labels(**lab)
        self.failed = self._failed.labels(**lab)
        self.prompt = self._prompt.labels(**lab)
        self.generation = self._generation.labels(**lab)
        self.running = self._running.labels(**lab)
        self.waiting = self._waiting.labels(**lab)
        self.cache = self._cache.labels(**lab)
        self.ttft = self._ttft.labels(**lab)
        self.tpot = self._tpot.labels(**lab)
        self.e2e = self._e2e.labels(**lab)
        self.step = {phase: self._step.labels(phase=phase, **lab) for phase in ("decode", "prefill")}

    # -- what the routes call ----------------------------------------------------------------------------
    def request_received(self) -> None:
        self.received.inc()

    def request_success(self) -> None:
        self.success.inc()

    def request_failed(self) -> None:
        self.failed.inc()

    def add_tokens(self, prompt: int = 0, generation: int = 0) -> None:
        if prompt:
            self.prompt.inc(prompt)
        if generation:
            self.generation.inc(generation)

    def observe_ttft(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def observe_token_time(self, seconds: float) -> None:
        self.tpot.observe(seconds)

    def observe_e2e(self, seconds: float) -> None:
        self.e2e.observe(seconds)

    def observe_engine_step(self, phase: str, seconds: float, sequences: int = 0) -> None:
        """The engine thread's step observer (EngineCore.step_observers)."""
        self.step[phase].observe(seconds)

    # -- scrape --------------------------------------------------------------------------------------------
    def refresh(self, stats: Optional[EngineStats]) -> None:
        stats = stats or EngineStats()
        self.running.set(stats.running)
        self.waiting.set(stats.waiting)
        used = stats.total_blocks - stats.free_blocks
        self.cache.set(used / stats.total_blocks if stats.total_blocks > 0 else 0.0)

    def render(self, stats: Optional[EngineStats] = None) -> bytes:
        self.refresh(stats)
        return generate_latest(self.registry)
