"""Metrics, traces and logs, shared by the gateway and the worker.

- ``gateway_metrics`` / ``worker_metrics``: every Prometheus metric, defined once per service,
  named after vLLM's (``vllm:x`` -> ``busstop:x``) where vLLM has one.
- ``tracing``: one OpenTelemetry trace per request; the W3C ``traceparent`` travels inside
  ``GenerateRequest.traceparent``; OTLP/HTTP export only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.
- ``logs``: JSON log lines carrying ``req_id`` and ``trace_id``.
"""
