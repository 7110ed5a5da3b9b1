"""Gateway and worker metrics: the series operators read, with the labels they filter on."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from gateway.telemetry.metrics import GatewayMetrics
from worker.service.metrics import WorkerMetrics


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_request_timer_observes_ttft_itl_queue_and_status() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    labels = {"model_name": "smollm2", "traffic_class": "interactive"}

    timer = metrics.request("smollm2", "interactive")
    timer.enqueued()
    assert value(registry, "busstop:num_requests_queued", **labels) == 1
    timer.accepted()
    assert value(registry, "busstop:num_requests_queued", **labels) == 0
    for _ in range(4):
        timer.on_tokens()
    timer.finish(200, "length", prompt_tokens=7, completion_tokens=4)
    timer.finish(200, "length", prompt_tokens=7, completion_tokens=4)  # idempotent

    assert value(registry, "busstop:time_to_first_token_seconds_count", **labels) == 1
    assert value(registry, "busstop:inter_token_latency_seconds_count", **labels) == 3
    assert value(registry, "busstop:request_queue_time_seconds_count", **labels) == 1
    assert value(registry, "busstop:e2e_request_latency_seconds_count", **labels) == 1
    assert value(registry, "busstop:requests_total", status="200", **labels) == 1
    assert value(registry, "busstop:request_success_total", finished_reason="length", **labels) == 1
    assert value(registry, "busstop:prompt_tokens_total", **labels) == 7
    assert value(registry, "busstop:generation_tokens_total", **labels) == 4


def test_a_request_that_fails_in_the_queue_leaves_the_queue_gauge() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    timer = metrics.request("smollm2", "batch")
    timer.enqueued()
    timer.finish(503)
    labels = {"model_name": "smollm2", "traffic_class": "batch"}
    assert value(registry, "busstop:num_requests_queued", **labels) == 0
    assert value(registry, "busstop:requests_total", status="503", **labels) == 1
    assert value(registry, "busstop:time_to_first_token_seconds_count", **labels) == 0
    metrics.count_rate_limited("smollm2", "batch", "tokens")
    assert value(registry, "busstop:rate_limited_requests_total", limit="tokens", **labels) == 1


@dataclass
class Stats:
    num_running: int = 0
    num_waiting: int = 0
    num_free_pages: int = 100
    num_total_pages: int = 100
    num_preemptions: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    last_step_num_tokens: int = 0
    last_step_time_s: float = 0.0
    num_held_back: int = 0


def test_worker_metrics_follow_engine_stats_once_per_step() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics("smollm2", registry)
    m = {"model_name": "smollm2"}

    metrics.observe_step(
        Stats(
            num_running=2,
            num_waiting=1,
            num_held_back=3,
            num_free_pages=75,
            prefix_cache_queries=40,
            prefix_cache_hits=16,
            last_step_num_tokens=40,
            last_step_time_s=0.02,
        )
    )
    assert value(registry, "busstop:num_requests_running", **m) == 2
    assert value(registry, "busstop:num_requests_waiting", **m) == 1
    assert value(registry, "busstop:num_requests_held_back", **m) == 3
    assert value(registry, "busstop:kv_cache_pages_used", **m) == 25
    assert value(registry, "busstop:kv_cache_pages_total", **m) == 100
    assert value(registry, "busstop:kv_cache_usage_perc", **m) == 0.25
    assert value(registry, "busstop:iteration_tokens_total_count", **m) == 1
    assert value(registry, "busstop:iteration_tokens_total_sum", **m) == 40

    # Cumulative engine counters become counter increments, whether or not the stats object is reused.
    metrics.observe_step(
        Stats(num_free_pages=100, num_preemptions=3, prefix_cache_queries=50, prefix_cache_hits=16)
    )
    assert value(registry, "busstop:num_preemptions_total", **m) == 3
    assert value(registry, "busstop:prefix_cache_queries_total", **m) == 50
    assert value(registry, "busstop:prefix_cache_hits_total", **m) == 16
    assert value(registry, "busstop:kv_cache_pages_used", **m) == 0
    # An idle step (no tokens) records no step time or size.
    assert value(registry, "busstop:step_duration_seconds_count", **m) == 1


def test_worker_metrics_export_the_tenants_virtual_counters_at_each_scrape() -> None:
    registry = CollectorRegistry()
    counters: dict[tuple[str, str], float] = {("batch", "distill"): 120.0}
    WorkerMetrics("smollm2", registry).watch_shares(counters)
    labels = {"model_name": "smollm2", "traffic_class": "batch"}
    assert value(registry, "busstop:tenant_virtual_tokens", tenant="distill", **labels) == 120.0
    counters[("batch", "distill")] = 180.0
    counters[("batch", "curation")] = 90.0
    assert value(registry, "busstop:tenant_virtual_tokens", tenant="distill", **labels) == 180.0
    assert value(registry, "busstop:tenant_virtual_tokens", tenant="curation", **labels) == 90.0
