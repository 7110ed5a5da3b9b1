"""GET /metrics: this gateway process's Prometheus metrics (shared/telemetry/gateway_metrics.py)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from gateway.telemetry.metrics import get_gateway_metrics

router = APIRouter(tags=["operations"])


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    get_gateway_metrics()  # the series exist (at zero) before the first request
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
