"""Trace propagation: the worker's spans join the gateway's trace through the traceparent string."""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.telemetry.trace import GatewayRequestTrace
from shared.telemetry.tracing import context_from_traceparent
from worker.service.trace import WorkerRequestTrace


def provider_with(exporter: InMemorySpanExporter, service: str) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def test_one_request_is_one_trace_across_gateway_and_worker() -> None:
    gateway_spans, worker_spans = InMemorySpanExporter(), InMemorySpanExporter()
    gateway_tracer = provider_with(gateway_spans, "busstop-gateway").get_tracer("gateway")
    worker_tracer = provider_with(worker_spans, "busstop-worker").get_tracer("worker")

    gw = GatewayRequestTrace(gateway_tracer, "POST /v1/chat/completions", "r1", "smollm2", "interactive")
    gw.enqueued()
    traceparent = gw.traceparent  # what the GenerateRequest carries over Redis
    assert traceparent is not None and traceparent.startswith("00-")

    wk = WorkerRequestTrace(worker_tracer, traceparent, "r1", "interactive", "w1", model="smollm2")
    wk.admitted(num_prompt_tokens=12)
    gw.accepted("w1")
    wk.on_tokens()
    wk.on_tokens()  # later tokens change nothing
    wk.finish("length", completion_tokens=8)
    gw.finish(200, prompt_tokens=12, completion_tokens=8)

    spans = gateway_spans.get_finished_spans() + worker_spans.get_finished_spans()
    assert sorted(s.name for s in spans) == sorted(
        ["POST /v1/chat/completions", "queue_wait", "worker.request", "prefill", "decode"]
    )
    assert {s.context.trace_id for s in spans} == {gw.span.get_span_context().trace_id}
    by_name = {s.name: s for s in spans}
    assert by_name["worker.request"].parent.span_id == by_name["POST /v1/chat/completions"].context.span_id
    assert by_name["prefill"].parent.span_id == by_name["worker.request"].context.span_id
    assert by_name["prefill"].end_time <= by_name["decode"].start_time


def test_a_missing_or_malformed_traceparent_starts_a_fresh_trace() -> None:
    exporter = InMemorySpanExporter()
    tracer = provider_with(exporter, "busstop-worker").get_tracer("worker")
    for bad in (None, "", "not-a-traceparent"):
        assert context_from_traceparent(bad) == {}
        wk = WorkerRequestTrace(tracer, bad, "r", "batch", "w")
        wk.finish("abort", error="cancelled")
    spans = exporter.get_finished_spans()
    assert len({s.context.trace_id for s in spans}) == 3
    assert all(s.parent is None for s in spans)
