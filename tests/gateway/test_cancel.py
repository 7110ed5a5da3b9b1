"""A client that goes away makes the gateway cancel its request on the worker that holds it."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from redis.asyncio import Redis

from gateway.main import create_app
from shared import keys
from shared.messages import TrafficClass, WorkerHeartbeat
from tests.gateway.conftest import API_KEY, ServerThread, make_settings, running
from tests.gateway.fake_worker import FakeWorker

HEADERS = {"Authorization": f"Bearer {API_KEY}"}

MANY_WORDS = tuple(f" w{i}" for i in range(500))


async def wait_until(condition: object, what: str) -> None:
    for _ in range(500):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting until {what}")


async def test_a_disconnected_stream_is_cancelled_on_its_worker(server: ServerThread, redis_url: str) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "go on"}],
        "stream": True,
        "max_tokens": 500,
    }
    async with FakeWorker(redis_url, words=MANY_WORDS, delay_s=0.02) as worker:
        async with (
            httpx.AsyncClient(base_url=server.url, headers=HEADERS) as http,
            http.stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            assert response.status_code == 200
            lines = response.aiter_lines()
            while "w3" not in await anext(lines):  # a few tokens in
                pass
        # leaving the block closed the connection mid-stream
        req_id = worker.requests[0].req_id
        await wait_until(lambda: req_id in worker.cancelled, "the worker got the CancelRequest")
        await wait_until(lambda: req_id in worker.acked, "the worker finished the request")


async def test_a_request_no_worker_accepts_is_withdrawn(redis_url: str) -> None:
    """A worker is alive but takes nothing (full): after queue_timeout_s the gateway answers 503 and
    deletes the message, so no worker serves it later for a client that is gone."""
    redis = Redis.from_url(redis_url, decode_responses=True)
    beat = WorkerHeartbeat(worker_id="busy", model="tiny", max_model_len=64)
    await redis.set(keys.worker_key("tiny", "busy"), beat.model_dump_json(), px=10_000)
    app = create_app(make_settings(redis_url, queue_timeout_s=0.3))
    body = {"model": "tiny", "messages": [{"role": "user", "content": "x"}]}
    try:
        async with (
            running(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://gateway", headers=HEADERS
            ) as client,
        ):
            response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == 503 and response.json()["error"]["code"] == "queue_timeout"
        assert await redis.xlen(keys.request_stream("tiny", TrafficClass.INTERACTIVE)) == 0
    finally:
        await redis.aclose()


async def test_a_client_that_leaves_a_non_stream_request_cancels_it(
    server: ServerThread, redis_url: str
) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "go on"}], "max_tokens": 500}
    async with FakeWorker(redis_url, words=MANY_WORDS, delay_s=0.02) as worker:
        async with httpx.AsyncClient(
            base_url=server.url, headers=HEADERS, timeout=httpx.Timeout(10, read=0.3)
        ) as http:
            with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
                await http.post("/v1/chat/completions", json=body)
        await wait_until(lambda: worker.requests, "the worker got the request")
        req_id = worker.requests[0].req_id
        await wait_until(lambda: req_id in worker.cancelled, "the worker got the CancelRequest")
