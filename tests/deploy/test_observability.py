"""Metrics and traces of the real stack: redis-server, a worker process on the default model and the
gateway under uvicorn, as ``busstop up`` runs them.

The worker exposes /metrics on a free port; both processes export spans over OTLP/HTTP to a
receiver in this test (the wire format an OpenTelemetry Collector accepts).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from busstop.redis_server import free_port
from busstop.stack import LocalStack
from tests.deploy.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.deploy.stack_client import StreamedChat, scrape, stream_chat, value

INTERACTIVE = {"model_name": "smollm2", "traffic_class": "interactive"}
MODEL = {"model_name": "smollm2"}


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def stack(otlp: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, str]]:
    metrics_port = free_port()
    env = {
        "BUSSTOP_WORKER_METRICS_PORT": str(metrics_port),
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export spans within 0.1 s instead of 5 s
        "BUSSTOP_MODEL_KV_CACHE_BYTES": str(64 * 1024 * 1024),
    }
    logs: Path = tmp_path_factory.mktemp("observed-stack")
    with LocalStack(port=free_port(), env=env, log_dir=logs) as running:
        yield running, f"http://127.0.0.1:{metrics_port}/metrics"


def test_a_streamed_request_moves_ttft_and_kv_metrics(stack: tuple[LocalStack, str]) -> None:
    local, worker_metrics = stack
    gateway_metrics = f"{local.url}/metrics"
    before = scrape(gateway_metrics)
    during: dict[str, float] = {}

    def on_chunk(chat: StreamedChat) -> None:
        # A few tokens in, the request is in the running batch and holds KV pages; gauges are set
        # once per engine step, after the step that produced an earlier token.
        if chat.num_chunks == 3:
            seen = scrape(worker_metrics)
            during["running"] = value(seen, "busstop:num_requests_running", **MODEL)
            during["pages_used"] = value(seen, "busstop:kv_cache_pages_used", **MODEL)
            during["usage"] = value(seen, "busstop:kv_cache_usage_perc", **MODEL)

    chat = stream_chat(
        local.url, local.api_key, "Count from one to twenty.", max_tokens=24, on_chunk=on_chunk
    )
    assert chat.finish_reason == "length" and chat.usage["completion_tokens"] == 24

    after = scrape(gateway_metrics)
    ttft = "busstop:time_to_first_token_seconds_count"
    assert value(after, ttft, **INTERACTIVE) == value(before, ttft, **INTERACTIVE) + 1
    for name in ("busstop:e2e_request_latency_seconds_count", "busstop:request_queue_time_seconds_count"):
        assert value(after, name, **INTERACTIVE) == value(before, name, **INTERACTIVE) + 1
    itl = "busstop:inter_token_latency_seconds_count"
    assert value(after, itl, **INTERACTIVE) > value(before, itl, **INTERACTIVE)
    requests_ok = "busstop:requests_total"
    assert value(after, requests_ok, status="200", **INTERACTIVE) == (
        value(before, requests_ok, status="200", **INTERACTIVE) + 1
    )
    assert value(after, "busstop:generation_tokens_total", **INTERACTIVE) >= 24

    assert during["running"] >= 1 and during["pages_used"] >= 1 and 0 < during["usage"] <= 1
    worker = scrape(worker_metrics)
    assert value(worker, "busstop:kv_cache_pages_total", **MODEL) >= during["pages_used"]
    assert value(worker, "busstop:iteration_tokens_total_count", **MODEL) >= 24
    assert value(worker, "busstop:step_duration_seconds_count", **MODEL) >= 24
    assert value(worker, "busstop:prefix_cache_queries_total", **MODEL) > 0


def spans_of_trace(
    otlp: OtlpReceiver, trace_id: str, names: set[str], timeout_s: float = 30.0
) -> list[ReceivedSpan]:
    deadline = time.monotonic() + timeout_s
    while True:
        spans = [s for s in otlp.received() if s.trace_id == trace_id]
        if names <= {s.name for s in spans} or time.monotonic() > deadline:
            return spans
        time.sleep(0.1)


def test_one_request_is_one_trace_across_gateway_and_worker(
    stack: tuple[LocalStack, str], otlp: OtlpReceiver
) -> None:
    local, _ = stack
    client_trace_id, client_span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    chat = stream_chat(
        local.url, local.api_key, "Say hello.", max_tokens=8,
        headers={"traceparent": f"00-{client_trace_id}-{client_span_id}-01"},
    )  # fmt: skip
    assert chat.finish_reason == "length"

    expected = {"gateway.request", "queue_wait", "worker.request", "prefill", "decode"}
    spans = spans_of_trace(otlp, client_trace_id, expected)
    names = [s.name for s in spans]
    assert expected <= set(names), f"spans received for the trace: {sorted(names)}"
    for name in expected:
        assert names.count(name) == 1, f"{name} appears {names.count(name)} times"
    assert {s.service for s in spans} == {"busstop-gateway", "busstop-worker"}
    by_name = {s.name: s for s in spans}
    by_id = {s.span_id: s for s in spans}

    gateway = by_name["gateway.request"]
    assert gateway.service == "busstop-gateway" and gateway.attributes["busstop.req_id"] == chat.req_id
    # Up from the gateway's request span (through FastAPI's HTTP server span) to the client's span.
    parent = gateway.parent_span_id
    while parent in by_id:
        assert by_id[parent].service == "busstop-gateway"
        parent = by_id[parent].parent_span_id
    assert parent == client_span_id
    assert by_name["queue_wait"].parent_span_id == gateway.span_id
    worker = by_name["worker.request"]
    assert worker.service == "busstop-worker" and worker.parent_span_id == gateway.span_id
    assert worker.attributes["busstop.req_id"] == chat.req_id
    assert by_name["prefill"].parent_span_id == worker.span_id == by_name["decode"].parent_span_id
    assert by_name["prefill"].service == by_name["decode"].service == "busstop-worker"
