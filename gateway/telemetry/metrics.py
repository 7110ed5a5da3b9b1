"""The gateway's Prometheus metrics, and the per-request timer the SSE path feeds.

Every series carries ``model_name`` and ``traffic_class``. Names follow vLLM's
(``vllm:time_to_first_token_seconds`` -> ``busstop:time_to_first_token_seconds``); the gateway
measures what the client sees, so TTFT and inter-token latency include the Redis hops.
"""

from __future__ import annotations

import time
from functools import lru_cache

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from gateway.telemetry.buckets import ITL_BUCKETS_S, REQUEST_LATENCY_BUCKETS_S, TTFT_BUCKETS_S

LABELS = ("model_name", "traffic_class")


class GatewayMetrics:
    """Metric objects of one gateway process; build once per registry (see ``get_gateway_metrics``)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.requests = Counter(
            "busstop:requests",
            "Completion requests by final HTTP status.",
            [*LABELS, "status"],
            registry=registry,
        )
        self.request_success = Counter(
            "busstop:request_success",
            "Completed requests by finish reason.",
            [*LABELS, "finished_reason"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "busstop:rate_limited_requests",
            "Requests refused by admission (429/503), by limit hit.",
            [*LABELS, "limit"],
            registry=registry,
        )
        self.queued = Gauge(
            "busstop:num_requests_queued",
            "Requests on a request stream that no worker has accepted yet (this gateway's).",
            LABELS,
            registry=registry,
        )
        self.queue_time = Histogram(
            "busstop:request_queue_time_seconds",
            "From the gateway's XADD to the worker's ACCEPTED.",
            LABELS,
            buckets=REQUEST_LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.ttft = Histogram(
            "busstop:time_to_first_token_seconds",
            "From request arrival to the first token sent.",
            LABELS,
            buckets=TTFT_BUCKETS_S,
            registry=registry,
        )
        self.itl = Histogram(
            "busstop:inter_token_latency_seconds",
            "Gap between consecutive token deltas sent to the client.",
            LABELS,
            buckets=ITL_BUCKETS_S,
            registry=registry,
        )
        self.e2e = Histogram(
            "busstop:e2e_request_latency_seconds",
            "From request arrival to the last byte of the answer.",
            LABELS,
            buckets=REQUEST_LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "busstop:prompt_tokens",
            "Prompt tokens of finished requests.",
            LABELS,
            registry=registry,
        )
        self.generation_tokens = Counter(
            "busstop:generation_tokens",
            "Generated tokens of finished requests.",
            LABELS,
            registry=registry,
        )

    def request(self, model_name: str, traffic_class: str, start: float | None = None) -> RequestTimer:
        """A timer for one request; ``start`` is its arrival on ``time.perf_counter()``'s clock."""
        return RequestTimer(self, model_name, traffic_class, time.perf_counter() if start is None else start)

    def count_rate_limited(self, model_name: str, traffic_class: str, limit: str) -> None:
        """``limit`` names what was hit: "requests", "tokens", "concurrency", "queue"."""
        self.rate_limited.labels(model_name, traffic_class, limit).inc()


class RequestTimer:
    """Observes one request's queue time, TTFT, inter-token gaps and end-to-end latency.

    ``on_tokens`` runs once per reply event, so it does one clock read and one histogram
    observation; label lookups happen once, here. ``finish`` is idempotent.
    """

    __slots__ = ("_m", "_labels", "_start", "_queued_at", "_last_token_at", "_finished", "_ttft", "_itl")

    def __init__(self, metrics: GatewayMetrics, model_name: str, traffic_class: str, start: float) -> None:
        self._m = metrics
        self._labels = (model_name, traffic_class)
        self._start = start
        self._queued_at: float | None = None
        self._last_token_at: float | None = None
        self._finished = False
        self._ttft = metrics.ttft.labels(*self._labels)
        self._itl = metrics.itl.labels(*self._labels)

    def enqueued(self) -> None:
        """The request is on its stream (after XADD)."""
        self._queued_at = time.perf_counter()
        self._m.queued.labels(*self._labels).inc()

    def accepted(self) -> None:
        """A worker accepted it (ACCEPTED event) or answered with an error."""
        if self._queued_at is None:
            return
        self._m.queue_time.labels(*self._labels).observe(time.perf_counter() - self._queued_at)
        self._m.queued.labels(*self._labels).dec()
        self._queued_at = None

    def on_tokens(self) -> None:
        """A delta carrying at least one token went to the client."""
        now = time.perf_counter()
        if self._last_token_at is None:
            self._ttft.observe(now - self._start)
        else:
            self._itl.observe(now - self._last_token_at)
        self._last_token_at = now

    def finish(
        self,
        status: int,
        finish_reason: str | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        """The response is complete (or failed) with HTTP ``status``."""
        if self._finished:
            return
        self._finished = True
        if self._queued_at is not None:  # never accepted: it leaves the queue without a queue time
            self._m.queued.labels(*self._labels).dec()
            self._queued_at = None
        m = self._m
        m.requests.labels(*self._labels, str(status)).inc()
        m.e2e.labels(*self._labels).observe(time.perf_counter() - self._start)
        if finish_reason is not None:
            m.request_success.labels(*self._labels, finish_reason).inc()
        if prompt_tokens:
            m.prompt_tokens.labels(*self._labels).inc(prompt_tokens)
        if completion_tokens:
            m.generation_tokens.labels(*self._labels).inc(completion_tokens)


@lru_cache(maxsize=1)
def get_gateway_metrics() -> GatewayMetrics:
    """The process-wide metrics on the default registry (what ``/metrics`` serves)."""
    return GatewayMetrics()
