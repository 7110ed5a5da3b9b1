"""One OpenTelemetry trace per request, across the gateway and the worker.

The gateway opens the request span (and a queue-wait child until a worker accepts); its W3C
``traceparent`` rides inside ``GenerateRequest.traceparent``; the worker opens its request span as a
child of that, with ``prefill`` (admission to first token) and ``decode`` (first token to finish)
below it. Spans are started and ended with explicit calls, not context managers, because a
request's life spans a streaming generator (gateway) or many engine steps (worker).

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
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
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


class GatewayRequestTrace:
    """The gateway's request span, and the queue-wait span from XADD to the worker's first reply.

    Started inside an HTTP handler, the span is a child of the current span (FastAPI's own server
    span). Without one, it is the server span itself, under ``parent``: the client's
    ``traceparent`` header, if it sent one.
    """

    __slots__ = ("span", "_tracer", "_queue")

    def __init__(
        self,
        tracer: Tracer,
        name: str,
        req_id: str,
        model: str,
        traffic_class: str,
        parent: str | None = None,
        start_time_ns: int | None = None,
    ) -> None:
        has_server_span = trace.get_current_span().get_span_context().is_valid
        self.span = tracer.start_span(
            name,
            context=None if has_server_span else context_from_traceparent(parent),
            kind=SpanKind.INTERNAL if has_server_span else SpanKind.SERVER,
            attributes={
                "busstop.req_id": req_id,
                "gen_ai.request.model": model,
                "busstop.traffic_class": traffic_class,
            },
            start_time=start_time_ns,
        )
        self._tracer = tracer
        self._queue: Span | None = None

    @property
    def traceparent(self) -> str | None:
        """What goes into ``GenerateRequest.traceparent``."""
        return traceparent_of(self.span)

    @property
    def trace_id(self) -> str | None:
        return trace_id_hex(self.span)

    def enqueued(self) -> None:
        self._queue = self._tracer.start_span("queue_wait", context=trace.set_span_in_context(self.span))

    def accepted(self, worker_id: str | None) -> None:
        if self._queue is not None:
            if worker_id:
                self._queue.set_attribute("busstop.worker_id", worker_id)
            self._queue.end()
            self._queue = None

    def finish(self, status: int, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        """End the spans (idempotent: the SDK ignores a second ``end``)."""
        self.accepted(None)
        self.span.set_attribute("http.response.status_code", status)
        self.span.set_attribute("gen_ai.usage.input_tokens", prompt_tokens)
        self.span.set_attribute("gen_ai.usage.output_tokens", completion_tokens)
        if status >= 500:
            self.span.set_status(Status(StatusCode.ERROR))
        self.span.end()


class WorkerRequestTrace:
    """A worker's spans for one request: ``worker.request`` with ``prefill`` then ``decode`` below it."""

    __slots__ = ("span", "_tracer", "_ctx", "_phase", "_is_decoding")

    def __init__(
        self,
        tracer: Tracer,
        traceparent: str | None,
        req_id: str,
        traffic_class: str,
        worker_id: str,
        model: str | None = None,
    ) -> None:
        attributes = {
            "busstop.req_id": req_id,
            "busstop.traffic_class": traffic_class,
            "busstop.worker_id": worker_id,
        }
        if model:
            attributes["gen_ai.request.model"] = model
        self.span = tracer.start_span(
            "worker.request",
            context=context_from_traceparent(traceparent),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )
        self._tracer = tracer
        self._ctx = trace.set_span_in_context(self.span)
        self._phase: Span | None = None
        self._is_decoding = False

    @property
    def trace_id(self) -> str | None:
        return trace_id_hex(self.span)

    def admitted(self, num_prompt_tokens: int) -> None:
        """The engine took the request: prefill starts."""
        self.span.set_attribute("gen_ai.usage.input_tokens", num_prompt_tokens)
        self._phase = self._tracer.start_span("prefill", context=self._ctx)

    def on_tokens(self, num_cached_tokens: int = 0) -> None:
        """Output tokens arrived; the first time, prefill ends and decode starts. Cheap afterwards."""
        if self._is_decoding:
            return
        self._is_decoding = True
        if self._phase is not None:
            self._phase.set_attribute("busstop.num_cached_tokens", num_cached_tokens)
            self._phase.end()
        self._phase = self._tracer.start_span("decode", context=self._ctx)

    def finish(self, finish_reason: str | None, completion_tokens: int = 0, error: str | None = None) -> None:
        """End the spans; ``error`` marks a request that failed or was left for another worker."""
        if self._phase is not None:
            self._phase.end()
            self._phase = None
        if finish_reason:
            self.span.set_attribute("gen_ai.response.finish_reasons", [finish_reason])
        self.span.set_attribute("gen_ai.usage.output_tokens", completion_tokens)
        if error:
            self.span.set_status(Status(StatusCode.ERROR, error))
        self.span.end()
