"""Tracing setup both processes share: one OpenTelemetry trace per request, across gateway and worker.

The gateway's request span (``gateway/telemetry/trace.py``) passes its W3C ``traceparent`` inside
``GenerateRequest.traceparent``; the worker's span (``worker/service/trace.py``) is its child.

A tracer provider is always installed so trace ids exist for logs and propagation; spans leave
the process over OTLP/HTTP only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the traces-specific
variable) is set, otherwise they are dropped when they end.
"""

from __future__ import annotations

import os
from functools import lru_cache

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
OTLP_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def is_export_enabled() -> bool:
    return any(os.environ.get(name) for name in OTLP_ENDPOINT_VARS)


@lru_cache(maxsize=1)
def setup_tracing(service_name: str) -> TracerProvider:
    """Install this process's tracer provider (once; later calls return the first one).

    ``OTEL_SERVICE_NAME``, when set, overrides ``service_name``.
    """
    name = os.environ.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    if is_export_enabled():
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def get_tracer(name: str) -> Tracer:
    return trace.get_tracer(name)


def traceparent_of(span: Span) -> str | None:
    """The W3C ``traceparent`` header value naming ``span`` as the parent, or None if it is not recording."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent")


def context_from_traceparent(traceparent: str | None) -> Context:
    """A context whose remote parent is ``traceparent`` (an empty one when it is missing or malformed)."""
    return _PROPAGATOR.extract({"traceparent": traceparent} if traceparent else {})


def trace_id_hex(span: Span) -> str | None:
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
