"""The gateway's FastAPI app: ``uvicorn gateway.main:app`` or ``python -m gateway``.

Routers are listed in ``ROUTERS``; a new resource adds its router there.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from gateway.api.openapi import install_openapi
from gateway.api.routes import batches, chat, completions, files, health, metrics, models, streams, ui
from gateway.batch.service import open_batch_service
from gateway.core.access_log import PROBE_PATHS, install_access_log_filter
from gateway.core.auth import build_key_store
from gateway.core.body_limit import BodyLimitMiddleware
from gateway.core.config import GatewaySettings, get_settings
from gateway.core.errors import install_error_handlers
from gateway.core.state import GatewayState
from gateway.ratelimit.admission import RateLimitAdmission
from gateway.ratelimit.headers import RateLimitHeadersMiddleware
from gateway.ratelimit.queue_cap import QueueCap, QueueCapSettings
from gateway.traffic import Admission
from gateway.transport.presence import GatewayPresence
from gateway.transport.workers import WorkerRegistry
from shared import keys
from shared.redis_client import connect
from shared.telemetry.tracing import setup_tracing

UNTRACED_PATHS = PROBE_PATHS
install_access_log_filter()

ROUTERS: list[APIRouter] = [
    chat.router, completions.router, models.router, health.router, ui.router, files.router, batches.router,
    metrics.router, streams.router,
]  # fmt: skip


def create_app(settings: GatewaySettings | None = None, admission: Admission | None = None) -> FastAPI:
    """The app; settings come from the environment (at startup, not import) unless given."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        s = settings or get_settings()
        setup_tracing("busstop-gateway")  # OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set
        # Blocking XREADs hold the socket for up to read_block_ms on purpose.
        redis = connect(s.redis_url, s.redis_timeout_s, s.read_block_ms / 1000, s.redis_cluster,
                        max_connections=s.redis_max_connections)
        partitions = keys.request_partitions(s.redis_cluster)
        presence = GatewayPresence(s.redis_url, s.gateway_id, s.redis_timeout_s, cluster=s.redis_cluster)
        presence.start()
        app.state.gateway = GatewayState(
            settings=s,
            redis=redis,
            workers=WorkerRegistry(redis, s.worker_refresh_s),
            keys=build_key_store(s),
            admission=admission
            or RateLimitAdmission(redis, QueueCap.from_settings(QueueCapSettings(), partitions), presence),
            presence=presence,
        )
        batch = await open_batch_service(app, app.state.gateway)
        try:
            yield
        finally:
            await batch.runner.stop()
            await asyncio.to_thread(presence.stop)
            await redis.aclose()

    app = FastAPI(
        title="busstop gateway",
        summary="OpenAI-compatible LLM serving",
        lifespan=lifespan,
        # FastAPI's own server span per request (busstop's request span hangs below it), but no spans
        # per dependency, and none for probes and scrapes.
        telemetry={"operation_spans": False, "exclude": lambda scope: scope.get("path") in UNTRACED_PATHS},
    )
    install_error_handlers(app)
    install_openapi(app)
    app.add_middleware(RateLimitHeadersMiddleware)
    app.add_middleware(BodyLimitMiddleware)
    for router in ROUTERS:
        app.include_router(router)
    return app


app = create_app()
