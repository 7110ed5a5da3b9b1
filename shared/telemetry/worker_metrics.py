"""The worker's Prometheus metrics, fed from ``Engine.stats()`` once per engine step.

Gauges are set and counters advanced by the difference between two snapshots of the engine's
cumulative counters, so the step loop pays for about ten metric updates per step and nothing per
token. Series carry ``model_name`` (one engine serves one model; the scheduler's queues mix classes).
"""

from __future__ import annotations

from typing import Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from shared.telemetry.buckets import STEP_TIME_BUCKETS_S, STEP_TOKENS_BUCKETS


class StepStats(Protocol):
    """The part of ``worker.engine.EngineStats`` the metrics read."""

    num_running: int
    num_waiting: int
    num_free_pages: int
    num_total_pages: int
    num_preemptions: int  # cumulative
    prefix_cache_queries: int  # cumulative, tokens
    prefix_cache_hits: int  # cumulative, tokens
    last_step_num_tokens: int
    last_step_time_s: float


class WorkerMetrics:
    """Metric objects of one worker process, bound to its served model name."""

    def __init__(self, model_name: str, registry: CollectorRegistry = REGISTRY) -> None:
        label = ["model_name"]
        self.running = Gauge(
            "busstop:num_requests_running", "Sequences in the running batch.", label, registry=registry
        ).labels(model_name)
        self.waiting = Gauge(
            "busstop:num_requests_waiting", "Sequences admitted but waiting to run.", label, registry=registry
        ).labels(model_name)
        self.pages_used = Gauge(
            "busstop:kv_cache_pages_used", "KV cache pages in use.", label, registry=registry
        ).labels(model_name)
        self.pages_total = Gauge(
            "busstop:kv_cache_pages_total", "KV cache pages in the pool.", label, registry=registry
        ).labels(model_name)
        self.kv_usage = Gauge(
            "busstop:kv_cache_usage_perc", "KV cache usage, 0 to 1 (1 = full).", label, registry=registry
        ).labels(model_name)
        self.prefix_queries = Counter(
            "busstop:prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache.",
            label,
            registry=registry,
        ).labels(model_name)
        self.prefix_hits = Counter(
            "busstop:prefix_cache_hits", "Prompt tokens found in the prefix cache.", label, registry=registry
        ).labels(model_name)
        self.preemptions = Counter(
            "busstop:num_preemptions", "Sequences preempted (recomputed later).", label, registry=registry
        ).labels(model_name)
        self.step_tokens = Histogram(
            "busstop:iteration_tokens_total",
            "Tokens computed per engine step.",
            label,
            buckets=STEP_TOKENS_BUCKETS,
            registry=registry,
        ).labels(model_name)
        self.step_time = Histogram(
            "busstop:step_duration_seconds",
            "Wall time of one engine step.",
            label,
            buckets=STEP_TIME_BUCKETS_S,
            registry=registry,
        ).labels(model_name)
        self._last_counts = (0, 0, 0)  # preemptions, prefix queries, prefix hits seen so far

    def observe_step(self, stats: StepStats) -> None:
        """Record one step; call after every ``Engine.step()`` that ran (idle steps are skipped)."""
        self.observe_load(stats)
        if stats.last_step_num_tokens > 0:
            self.step_tokens.observe(stats.last_step_num_tokens)
            self.step_time.observe(stats.last_step_time_s)

    def observe_load(self, stats: StepStats) -> None:
        """Refresh gauges and counters without a step (e.g. on a heartbeat while idle)."""
        used = stats.num_total_pages - stats.num_free_pages
        self.running.set(stats.num_running)
        self.waiting.set(stats.num_waiting)
        self.pages_used.set(used)
        self.pages_total.set(stats.num_total_pages)
        self.kv_usage.set(used / stats.num_total_pages if stats.num_total_pages else 0.0)
        counts = (stats.num_preemptions, stats.prefix_cache_queries, stats.prefix_cache_hits)
        for counter, now, before in zip(
            (self.preemptions, self.prefix_queries, self.prefix_hits), counts, self._last_counts, strict=True
        ):
            if now > before:
                counter.inc(now - before)
        self._last_counts = counts


def start_metrics_server(port: int, host: str = "0.0.0.0") -> None:
    """Serve the default registry at ``http://host:port/metrics`` from a daemon thread; 0 = off."""
    if port:
        start_http_server(port, addr=host)
