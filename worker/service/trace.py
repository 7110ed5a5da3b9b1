"""The worker's span of one request, a child of the gateway's, with ``prefill`` (admission to first
token) and ``decode`` (first token to finish) below it. Ended with explicit calls: a request's life
spans many engine steps.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from shared.telemetry.tracing import context_from_traceparent, trace_id_hex


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
