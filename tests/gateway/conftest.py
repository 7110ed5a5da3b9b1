"""The gateway app on the session's real Redis, and clients for it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from busstop.redis_server import free_port
from gateway.core.config import GatewaySettings
from gateway.main import create_app

API_KEY = "test-key"


def make_settings(redis_url: str, **overrides: object) -> GatewaySettings:
    """Settings with short waits, so the bounded waits of the tests stay short."""
    values: dict[str, object] = {
        "redis_url": redis_url,
        "dev_api_key": API_KEY,
        "worker_wait_s": 0.5,
        "read_block_ms": 50,
        "worker_refresh_s": 0.05,
        "redis_timeout_s": 1.0,
    }
    values.update(overrides)
    return GatewaySettings(_env_file=None, **values)  # type: ignore[call-arg, arg-type]


@pytest.fixture
def settings(redis_url: str) -> GatewaySettings:
    return make_settings(redis_url)


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[FastAPI]:
    """``app`` with its lifespan entered, in a task of its own: pytest-asyncio sets a fixture up and
    tears it down in different tasks, and the lifespan must enter and exit in the same one."""
    started, stop = asyncio.Event(), asyncio.Event()

    async def run() -> None:
        async with app.router.lifespan_context(app):
            started.set()
            await stop.wait()

    task = asyncio.create_task(run())
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        task.result()  # raises the startup error
    try:
        yield app
    finally:
        stop.set()
        await task


@pytest.fixture
async def app(settings: GatewaySettings) -> AsyncIterator[FastAPI]:
    async with running(create_app(settings)) as app:
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway", headers=headers) as client:
        yield client


class ServerThread:
    """uvicorn serving an app on a free loopback port, in a thread with its own event loop."""

    def __init__(self, app: FastAPI, log_level: str = "warning") -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level=log_level, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ServerThread:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        while self.thread.is_alive():
            await asyncio.sleep(0.01)


@pytest.fixture
async def server(settings: GatewaySettings) -> AsyncIterator[ServerThread]:
    async with ServerThread(create_app(settings)) as server:
        yield server
