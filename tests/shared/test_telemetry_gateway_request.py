"""One request's telemetry as the gateway sees it, fed with real reply events."""

from __future__ import annotations

import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from gateway.telemetry.metrics import GatewayMetrics
from gateway.telemetry.request import RequestTelemetry
from shared.messages import ErrorInfo, GenerateRequest, ReplyEvent, ReplyKind, TrafficClass, Usage
from shared.telemetry.logs import JsonFormatter


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return (
        registry.get_sample_value(name, {"model_name": "smollm2", "traffic_class": "batch", **labels}) or 0.0
    )


def test_a_streamed_request_is_counted_timed_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    request = GenerateRequest(
        req_id="r1", model="smollm2", traffic_class=TrafficClass.BATCH, prompt="secret prompt"
    )
    tracer = TracerProvider().get_tracer("test")
    telemetry = RequestTelemetry(request, metrics=GatewayMetrics(registry), tracer=tracer)
    assert telemetry.traceparent and telemetry.trace_id and telemetry.trace_id in telemetry.traceparent

    telemetry.enqueued()
    assert sample(registry, "busstop:num_requests_queued") == 1
    events = [
        ReplyEvent(seq=0, kind=ReplyKind.ACCEPTED, worker_id="w", usage=Usage(prompt_tokens=5)),
        ReplyEvent(seq=1, kind=ReplyKind.DELTA, text="a", token_ids=[1]),
        ReplyEvent(seq=2, kind=ReplyKind.DELTA, text="b", token_ids=[2, 3]),
        ReplyEvent(
            seq=3,
            kind=ReplyKind.DONE,
            finish_reason="length",
            usage=Usage(prompt_tokens=5, completion_tokens=3),
        ),
    ]
    with caplog.at_level(logging.INFO, logger="gateway.requests"):
        for event in events:
            telemetry.on_event(event)
        telemetry.finish(499)  # a late cancel after DONE changes nothing

    assert sample(registry, "busstop:num_requests_queued") == 0
    assert sample(registry, "busstop:request_queue_time_seconds_count") == 1
    assert sample(registry, "busstop:time_to_first_token_seconds_count") == 1
    assert sample(registry, "busstop:inter_token_latency_seconds_count") == 1
    assert sample(registry, "busstop:requests_total", status="200") == 1
    assert sample(registry, "busstop:requests_total", status="499") == 0
    assert sample(registry, "busstop:generation_tokens_total") == 3
    (record,) = caplog.records
    line = json.loads(JsonFormatter().format(record))
    assert line["req_id"] == "r1" and line["trace_id"] == telemetry.trace_id and line["status"] == 200
    assert "secret prompt" not in json.dumps(line)


def test_a_worker_error_before_acceptance_is_its_status() -> None:
    registry = CollectorRegistry()
    request = GenerateRequest(req_id="r2", model="smollm2", traffic_class=TrafficClass.BATCH, prompt="x")
    telemetry = RequestTelemetry(request, metrics=GatewayMetrics(registry))
    telemetry.enqueued()
    telemetry.on_event(
        ReplyEvent(seq=0, kind=ReplyKind.ERROR, error=ErrorInfo(status=400, message="too long"))
    )
    assert sample(registry, "busstop:requests_total", status="400") == 1
    assert sample(registry, "busstop:num_requests_queued") == 0
    assert sample(registry, "busstop:request_queue_time_seconds_count") == 0
    assert sample(registry, "busstop:time_to_first_token_seconds_count") == 0
