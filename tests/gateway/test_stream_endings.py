"""Every way a stream can fail after its 200 still ends cleanly: an error event, ``[DONE]``, and a
complete chunked body (the client never sees a cut connection), with the rate-limit lease let go."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import httpx

from busstop.redis_server import RedisServer
from gateway.main import create_app
from shared.retry import REDIS_ERRORS
from tests.gateway.conftest import API_KEY, ServerThread, make_settings
from tests.gateway.fake_worker import FakeWorker

CHAT = "/v1/chat/completions"
BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True}
WORDS = tuple(f"w{i} " for i in range(200))


async def sse_payloads(response: httpx.Response) -> AsyncIterator[str]:
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            yield line.removeprefix("data: ")


async def read_stream(url: str, on_delta: int | None = None, event: asyncio.Event | None = None) -> list[str]:
    """The stream's ``data:`` payloads, read to the end; sets ``event`` after ``on_delta`` deltas."""
    payloads: list[str] = []
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with (
        httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client,
        client.stream("POST", CHAT, json=BODY) as response,
    ):
        assert response.status_code == 200
        async for payload in sse_payloads(response):  # raises on an incomplete chunked body
            payloads.append(payload)
            if event is not None and sum('"content":"w' in p for p in payloads) == on_delta:
                event.set()
    return payloads


def assert_error_then_done(payloads: list[str], code: str) -> None:
    assert payloads[-1] == "[DONE]"
    error = json.loads(payloads[-2])["error"]
    assert error["code"] == code and error["message"]


async def test_redis_dying_mid_stream_ends_the_stream_cleanly() -> None:
    with RedisServer() as redis_server:
        settings = make_settings(redis_server.url, redis_retry_s=0.5)
        async with ServerThread(create_app(settings)) as server:
            worker = await FakeWorker(redis_server.url, words=WORDS, delay_s=0.05).__aenter__()
            started = asyncio.Event()
            reading = asyncio.create_task(read_stream(server.url, on_delta=3, event=started))
            await asyncio.wait_for(started.wait(), 30)
            redis_server.stop()  # mid-stream: reads, the cancel and the lease release all fail now
            payloads = await asyncio.wait_for(reading, 30)
            with contextlib.suppress(*REDIS_ERRORS):
                await worker.__aexit__(None, None, None)
    assert_error_then_done(payloads, "redis_unavailable")


async def test_a_silent_worker_ends_the_stream_with_a_504_event(redis_url: str) -> None:
    settings = make_settings(redis_url, reply_idle_timeout_s=0.5)
    async with ServerThread(create_app(settings)) as server, FakeWorker(redis_url, words=WORDS, delay_s=2.0):
        payloads = await asyncio.wait_for(read_stream(server.url), 30)
    assert_error_then_done(payloads, "worker_timeout")


async def test_a_worker_error_mid_stream_ends_the_stream_with_its_event(redis_url: str) -> None:
    app = create_app(make_settings(redis_url))
    async with ServerThread(app) as server, FakeWorker(redis_url, fail_after=2):
        payloads = await asyncio.wait_for(read_stream(server.url), 30)
    assert payloads[-1] == "[DONE]"
    assert json.loads(payloads[-2])["error"]["message"] == "the engine failed"
