"""The gateway's span of one request, and the queue-wait span until a worker accepts it.

Its W3C ``traceparent`` rides inside ``GenerateRequest.traceparent``, so the worker's spans hang
below it. Started and ended with explicit calls: a request's life spans a streaming generator.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from shared.telemetry.tracing import context_from_traceparent, trace_id_hex, traceparent_of


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
