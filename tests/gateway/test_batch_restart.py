"""A batch survives its gateway: killed mid-batch, another replica resumes it and it completes once;
and two replicas running side by side never process one batch twice."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from busstop.redis_server import free_port
from gateway.main import create_app
from shared import keys
from tests.gateway.batch_helpers import (
    INTERNAL,
    batch_env,
    batch_stream,
    chat_line,
    create_batch,
    file_lines,
    wait_batch,
    write_keys_file,
)
from tests.gateway.conftest import make_settings
from tests.gateway.fake_worker import FakeWorker

NUM_LINES = 30
FINAL = ("completed", "failed", "cancelled", "expired")


class GatewayProcess:
    """``python -m gateway`` in a child process, configured through the environment."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.env = {**os.environ, **env, "BUSSTOP_HOST": "127.0.0.1", "BUSSTOP_PORT": str(self.port)}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> GatewayProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        async with httpx.AsyncClient() as client:
            while True:
                assert self.process.poll() is None, "the gateway exited at startup"
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"{self.url}/health")).status_code == 200:
                        return self
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, the batch lease is left to run out."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def gateway_env(redis_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    yield {
        "BUSSTOP_REDIS_URL": redis_url,
        "BUSSTOP_KEYS_FILE": str(write_keys_file(tmp_path / "keys.json")),
        "BUSSTOP_FILES_DIR": str(tmp_path / "files"),
        "BUSSTOP_BATCH_LEASE_S": "1.0",
        "BUSSTOP_BATCH_POLL_S": "0.1",
        "BUSSTOP_BATCH_WINDOW": "4",
        "BUSSTOP_READ_BLOCK_MS": "100",
        "BUSSTOP_WORKER_REFRESH_S": "0.1",
    }


async def assert_completed_once(
    client: httpx.AsyncClient, batch_id: str, redis_url: str, worker: FakeWorker
) -> None:
    done = await wait_batch(client, batch_id, FINAL)
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": NUM_LINES, "completed": NUM_LINES, "failed": 0}
    outputs = await file_lines(client, done["output_file_id"])
    assert [o["custom_id"] for o in outputs] == [f"req-{i}" for i in range(NUM_LINES)]
    # Every line reached a worker exactly once: nothing re-submitted, nothing lost.
    assert sorted(r.req_id for r in worker.requests) == sorted({r.req_id for r in worker.requests})
    assert len(worker.requests) == NUM_LINES
    redis = Redis.from_url(redis_url)
    try:
        assert await redis.xlen(batch_stream("tiny")) == NUM_LINES
        assert not await redis.smembers(keys.BATCHES_ACTIVE)
    finally:
        await redis.aclose()


async def test_gateway_killed_mid_batch_the_batch_completes_once(
    gateway_env: dict[str, str], redis_url: str
) -> None:
    text = "\n".join(chat_line(f"req-{i}") for i in range(NUM_LINES))
    first = await GatewayProcess(gateway_env).start()
    second = GatewayProcess(gateway_env)
    try:
        async with FakeWorker(redis_url, model="tiny", delay_s=0.05) as worker:
            async with httpx.AsyncClient(base_url=first.url, headers=INTERNAL, timeout=30) as client:
                batch = await create_batch(client, text)
                mid = await wait_batch(client, batch["id"], ("in_progress",), min_completed=5)
                first.kill()
            assert mid["request_counts"]["completed"] < NUM_LINES
            await second.start()
            async with httpx.AsyncClient(base_url=second.url, headers=INTERNAL, timeout=30) as client:
                await assert_completed_once(client, batch["id"], redis_url, worker)
    finally:
        first.kill()
        second.kill()


@pytest.fixture
async def two_replicas(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[list[FastAPI]]:
    batch_env(monkeypatch, tmp_path / "files")
    settings = make_settings(redis_url, dev_api_key=None, keys_file=write_keys_file(tmp_path / "keys.json"))
    apps = [create_app(settings), create_app(settings)]
    async with apps[0].router.lifespan_context(apps[0]), apps[1].router.lifespan_context(apps[1]):
        yield apps


async def test_two_replicas_never_run_one_batch_twice(two_replicas: list[FastAPI], redis_url: str) -> None:
    text = "\n".join(chat_line(f"req-{i}") for i in range(NUM_LINES))
    transports = [httpx.ASGITransport(app=app) for app in two_replicas]
    async with (
        FakeWorker(redis_url, model="tiny", delay_s=0.05) as worker,
        httpx.AsyncClient(transport=transports[0], base_url="http://a", headers=INTERNAL) as a,
        httpx.AsyncClient(transport=transports[1], base_url="http://b", headers=INTERNAL) as b,
    ):
        batch = await create_batch(a, text)
        await wait_batch(b, batch["id"], ("in_progress",), min_completed=1)
        holders = [app.state.batch.runner.running_ids for app in two_replicas]
        assert sorted(len(h) for h in holders) == [0, 1]  # exactly one replica drives it
        await assert_completed_once(b, batch["id"], redis_url, worker)
