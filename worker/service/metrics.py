"""The worker's Prometheus metrics, fed from ``Engine.stats()`` once per engine step.

Gauges are set and counters advanced by the difference between two snapshots of the engine's
cumulative counters, so the step loop pays for about ten metric updates per step and nothing per
token. Series carry ``model_name`` (one engine serves one model; the scheduler's queues mix classes).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from worker.engine.outputs import EngineStats

# Following vLLM's, so dashboards built for vLLM read these the same way.
# fmt: off
# vllm:iteration_tokens_total
STEP_TOKENS_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
# busstop:step_duration_seconds (no vLLM counterpart): one engine step, sub-millisecond to seconds
STEP_TIME_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
# fmt: on


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
        self.held_back = Gauge(
            "busstop:num_requests_held_back",
            "Lower-class sequences the last step left out to keep a latency target (step shaping).",
            label,
            registry=registry,
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
        self._model_name, self._registry = model_name, registry
        self._last_counts = (0, 0, 0)  # preemptions, prefix queries, prefix hits seen so far

    def observe_step(self, stats: EngineStats) -> None:
        """Record one step; call after every ``Engine.step()`` that ran (idle steps are skipped)."""
        self.observe_load(stats)
        if stats.last_step_num_tokens > 0:
            self.step_tokens.observe(stats.last_step_num_tokens)
            self.step_time.observe(stats.last_step_time_s)

    def observe_load(self, stats: EngineStats) -> None:
        """Refresh gauges and counters without a step (e.g. on a heartbeat while idle)."""
        used = stats.num_total_pages - stats.num_free_pages
        self.running.set(stats.num_running)
        self.waiting.set(stats.num_waiting)
        self.held_back.set(stats.num_held_back)
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


    def watch_shares(self, counters: Mapping[tuple[str, str], float]) -> None:
        """Export the tenants' virtual counters ((traffic class, tenant) -> value) at every scrape."""
        self._registry.register(_TenantShares(self._model_name, counters))


class _TenantShares(Collector):
    def __init__(self, model_name: str, counters: Mapping[tuple[str, str], float]) -> None:
        self._model_name, self._counters = model_name, counters

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "busstop:tenant_virtual_tokens",
            "An internal tenant's virtual token counter (tokens served / weight), as last read here.",
            labels=["model_name", "traffic_class", "tenant"],
        )
        for (traffic_class, tenant), value in list(self._counters.items()):
            family.add_metric([self._model_name, traffic_class, tenant], value)
        yield family


def start_metrics_server(port: int, host: str = "0.0.0.0") -> None:
    """Serve the default registry at ``http://host:port/metrics`` from a daemon thread; 0 = off."""
    if port:
        start_http_server(port, addr=host)
