"""The Files and Batch APIs' parts, built once per gateway process and kept on ``app.state.batch``."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI

from gateway.batch.config import BatchSettings, get_batch_settings
from gateway.batch.files import FileStore
from gateway.batch.runner import BatchRunner
from gateway.batch.serving import ServingExecutor
from gateway.batch.store import BatchStore
from gateway.core.state import GatewayState


@dataclass(frozen=True)
class BatchService:
    settings: BatchSettings
    files: FileStore
    store: BatchStore
    runner: BatchRunner


async def open_batch_service(
    app: FastAPI, state: GatewayState, settings: BatchSettings | None = None
) -> BatchService:
    """Build the service, start the runner, and keep it on ``app.state.batch``."""
    s = settings or get_batch_settings()
    files = FileStore(state.redis, s.files_dir)
    store = BatchStore(state.redis)
    runner = BatchRunner(state.redis, store, files, ServingExecutor(state), s)
    runner.start()
    service = BatchService(s, files, store, runner)
    app.state.batch = service
    return service
