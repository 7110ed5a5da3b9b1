"""Everything the gateway records about one request: metrics, spans and one log line at the end.

``Generation`` (gateway/transport/generation.py) drives it: ``enqueued`` after the XADD,
``on_event`` for every reply event read, ``finish`` with the HTTP status when the request ends for
any reason (the first call wins). Per reply event the cost is a kind check, and for token deltas one
clock read and one histogram observation.
"""

from __future__ import annotations

import logging
import time

from opentelemetry.trace import Tracer

from gateway.telemetry.metrics import GatewayMetrics, get_gateway_metrics
from gateway.telemetry.trace import GatewayRequestTrace
from shared.messages import GenerateRequest, ReplyEvent, ReplyKind
from shared.telemetry.tracing import get_tracer

log = logging.getLogger("gateway.requests")

# nginx's "client closed request": the client went away before the answer was complete.
CLIENT_CLOSED = 499


class RequestTelemetry:
    def __init__(
        self,
        request: GenerateRequest,
        span_name: str = "gateway.request",
        metrics: GatewayMetrics | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        """Start timing at the request's arrival; ``request.traceparent`` (the client's, if any) is the
        parent of the gateway's span, and ``traceparent`` is what the worker must get instead."""
        arrival = request.arrival_time or time.time()
        waited = max(0.0, time.time() - arrival)
        self._request = request
        self._cls = request.traffic_class.value
        self._timer = (metrics or get_gateway_metrics()).request(
            request.model, self._cls, start=time.perf_counter() - waited
        )
        self._trace = GatewayRequestTrace(
            tracer or get_tracer("busstop.gateway"),
            span_name,
            request.req_id,
            request.model,
            self._cls,
            parent=request.traceparent,
            start_time_ns=int(arrival * 1e9),
        )
        self._started = time.perf_counter() - waited
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._is_finished = False

    @property
    def traceparent(self) -> str | None:
        return self._trace.traceparent

    @property
    def trace_id(self) -> str | None:
        return self._trace.trace_id

    def enqueued(self) -> None:
        self._timer.enqueued()
        self._trace.enqueued()

    def on_event(self, event: ReplyEvent) -> None:
        kind = event.kind
        if kind is ReplyKind.DELTA:
            if event.token_ids:
                self._completion_tokens += len(event.token_ids)
                self._timer.on_tokens()
        elif kind is ReplyKind.ACCEPTED:
            self._timer.accepted()
            self._trace.accepted(event.worker_id)
            if event.usage is not None:
                self._prompt_tokens = event.usage.prompt_tokens
        elif kind is ReplyKind.DONE:
            if event.token_ids:
                self._completion_tokens += len(event.token_ids)
                self._timer.on_tokens()
            if event.usage is not None:
                self._prompt_tokens = event.usage.prompt_tokens
                self._completion_tokens = event.usage.completion_tokens
            self.finish(200, event.finish_reason or "stop")
        elif kind is ReplyKind.ERROR:
            self.finish(event.error.status if event.error is not None else 502)

    def finish(self, status: int, finish_reason: str | None = None) -> None:
        if self._is_finished:
            return
        self._is_finished = True
        self._timer.finish(status, finish_reason, self._prompt_tokens, self._completion_tokens)
        self._trace.finish(status, self._prompt_tokens, self._completion_tokens)
        log.info(
            "request finished",
            extra={
                "req_id": self._request.req_id,
                "trace_id": self._trace.trace_id,
                "model": self._request.model,
                "traffic_class": self._cls,
                "tenant": self._request.tenant,
                "status": status,
                "finish_reason": finish_reason,
                "prompt_tokens": self._prompt_tokens,
                "completion_tokens": self._completion_tokens,
                "duration_s": round(time.perf_counter() - self._started, 4),
            },
        )
