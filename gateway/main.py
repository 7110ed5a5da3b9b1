"""The gateway's FastAPI app: ``uvicorn gateway.main:app`` or ``python -m gateway``.

Routers are listed in ``ROUTERS``; a new resource adds its router there.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from redis.asyncio import Redis

from gateway.admission import Admission
from gateway.api.routes import batches, chat, completions, files, health, metrics, models, ui
from gateway.batch.service import open_batch_service
from gateway.core.auth import build_key_store
from gateway.core.config import GatewaySettings, get_settings
from gateway.core.errors import install_error_handlers
from gateway.core.state import GatewayState
from gateway.ratelimit.admission import RateLimitAdmission
from gateway.ratelimit.headers import RateLimitHeadersMiddleware
from gateway.ratelimit.queue_cap import QueueCap, QueueCapSettings
from gateway.transport.workers import WorkerRegistry
from shared.telemetry.tracing import setup_tracing

UNTRACED_PATHS = frozenset({"/health", "/ready", "/metrics"})


class _ProbeAccessFilter(logging.Filter):
    """Drops uvicorn's access lines for probes and scrapes: they would drown the requests."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, tuple) and len(args) > 2 and args[2] in UNTRACED_PATHS)


logging.getLogger("uvicorn.access").addFilter(_ProbeAccessFilter())

ROUTERS: list[APIRouter] = [
    chat.router, completions.router, models.router, health.router, ui.router, files.router, batches.router,
    metrics.router,
]  # fmt: skip


def create_app(settings: GatewaySettings | None = None, admission: Admission | None = None) -> FastAPI:
    """The app; settings come from the environment (at startup, not import) unless given."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        s = settings or get_settings()
        setup_tracing("busstop-gateway")  # OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set
        redis = Redis.from_url(
            s.redis_url,
            decode_responses=True,
            socket_connect_timeout=s.redis_timeout_s,
            # Blocking XREADs hold the socket for up to read_block_ms on purpose.
            socket_timeout=s.redis_timeout_s + s.read_block_ms / 1000,
        )
        app.state.gateway = GatewayState(
            settings=s,
            redis=redis,
            workers=WorkerRegistry(redis, s.worker_refresh_s),
            keys=build_key_store(s),
            admission=admission or RateLimitAdmission(redis, QueueCap.from_settings(QueueCapSettings())),
        )
        batch = await open_batch_service(app, app.state.gateway)
        try:
            yield
        finally:
            await batch.runner.stop()
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
    app.add_middleware(RateLimitHeadersMiddleware)
    for router in ROUTERS:
        app.include_router(router)
    return app


app = create_app()
