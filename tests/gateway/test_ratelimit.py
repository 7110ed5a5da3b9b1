"""Per-key limits in Redis: RPM, TPM with reservation and reconciliation, concurrency, queue caps."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from gateway.core.auth import hash_key
from gateway.main import create_app
from gateway.ratelimit import QueueCap, QueueCapSettings, RateLimiter, RateLimits, format_duration, num_queued
from shared import keys
from shared.messages import TrafficClass, WorkerHeartbeat
from tests.gateway.conftest import make_settings
from tests.gateway.fake_worker import FakeWorker


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_requests_per_minute_refuses_the_extra_request_with_retry_after(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    limits = RateLimits(requests_per_minute=3)
    states = [await limiter.acquire("k", limits, 1, f"r{i}") for i in range(4)]
    assert [s.is_allowed for s in states] == [True, True, True, False]
    assert [s.remaining_requests for s in states[:3]] == [2, 1, 0]
    refused = states[3]
    assert refused.reason == "requests"
    headers = refused.headers()
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(headers["retry-after"]) <= 20  # one request refills in 60s / 3
    assert "x-ratelimit-limit-tokens" not in headers


async def test_tokens_are_reserved_then_reconciled_with_usage(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    limits = RateLimits(tokens_per_minute=1000)
    first = await limiter.acquire("k", limits, 600, "a")
    assert first.is_allowed and first.remaining_tokens <= 400
    refused = await limiter.acquire("k", limits, 600, "b")
    assert not refused.is_allowed and refused.reason == "tokens"
    assert refused.headers()["x-ratelimit-remaining-tokens"] == str(refused.remaining_tokens)
    assert refused.retry_after_s > 0
    # The first request used only 100 of its 600: the other 500 come back.
    await limiter.release("k", limits, "a", num_reserved=600, num_used=100)
    assert (await limiter.acquire("k", limits, 600, "b")).is_allowed


async def test_a_request_larger_than_the_token_limit_is_refused_outright(redis: Redis) -> None:
    state = await RateLimiter(redis).acquire("k", RateLimits(tokens_per_minute=100), 101, "a")
    assert not state.is_allowed and state.reason == "too_large"
    assert "max_tokens" in state.message()


async def test_concurrency_slots_are_freed_on_release_and_on_lease_expiry(redis: Redis) -> None:
    limits = RateLimits(max_concurrency=2)
    limiter = RateLimiter(redis)
    assert (await limiter.acquire("k", limits, 1, "a")).is_allowed
    assert (await limiter.acquire("k", limits, 1, "b")).is_allowed
    refused = await limiter.acquire("k", limits, 1, "c")
    assert not refused.is_allowed and refused.reason == "concurrency"
    await limiter.release("k", limits, "a", 1, 1)
    assert (await limiter.acquire("k", limits, 1, "c")).is_allowed
    # A replica that died holding a slot: its lease runs out and the slot is free again.
    inflight = keys.ratelimit_key("k", "inflight")
    await redis.zadd(inflight, {"b": 0, "c": 0})
    assert (await limiter.acquire("k", limits, 1, "d")).is_allowed


async def test_limits_are_shared_by_limiters_on_other_connections(redis_url: str, redis: Redis) -> None:
    other = Redis.from_url(redis_url)
    try:
        limits = RateLimits(requests_per_minute=2)
        assert (await RateLimiter(redis).acquire("k", limits, 1, "a")).is_allowed
        assert (await RateLimiter(other).acquire("k", limits, 1, "b")).is_allowed
        assert not (await RateLimiter(redis).acquire("k", limits, 1, "c")).is_allowed
        # Keys are independent.
        assert (await RateLimiter(other).acquire("k2", limits, 1, "c")).is_allowed
    finally:
        await other.aclose()


async def test_peek_reports_levels_without_consuming(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    limits = RateLimits(requests_per_minute=5, tokens_per_minute=50)
    await limiter.acquire("k", limits, 20, "a")
    for _ in range(3):
        state = await limiter.peek("k", limits)
        assert state.is_allowed
        assert state.remaining_requests == 4 and 30 <= state.remaining_tokens <= 31


def test_bad_limits_and_duration_format() -> None:
    with pytest.raises(ValueError):
        RateLimits(requests_per_minute=0)
    assert format_duration(0.02) == "20ms"
    assert format_duration(1.5) == "1.5s"
    assert format_duration(360) == "6m0s"


async def test_queue_cap_counts_what_workers_have_not_taken(redis: Redis) -> None:
    cap = QueueCap.from_settings(QueueCapSettings(max_queued_interactive=2))
    stream = keys.request_stream("m", TrafficClass.INTERACTIVE)
    assert not await cap.is_full(redis, "m", TrafficClass.INTERACTIVE)
    await redis.xgroup_create(stream, keys.WORKER_GROUP, id="0", mkstream=True)
    for i in range(3):
        await redis.xadd(stream, {"data": str(i)})
    assert await num_queued(redis, "m", TrafficClass.INTERACTIVE) == 3
    assert await cap.is_full(redis, "m", TrafficClass.INTERACTIVE)
    await redis.xreadgroup(keys.WORKER_GROUP, "w1", {stream: ">"}, count=2)
    assert await num_queued(redis, "m", TrafficClass.INTERACTIVE) == 1
    assert not await cap.is_full(redis, "m", TrafficClass.INTERACTIVE)
    assert not await cap.is_full(redis, "m", TrafficClass.BATCH)  # batch: no cap by default


# --- through the gateway ------------------------------------------------------------------------------

PUBLIC_KEY = "limited-public-key"


@pytest.fixture
async def limited_client(redis_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The real app with one public key limited to 3 requests and 60 tokens per minute."""
    limits = {"rpm": 3, "tpm": 60, "max_concurrency": 8}
    entry = {"sha256": hash_key(PUBLIC_KEY), "tenant": "web", "traffic_class": "public", "limits": limits}
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": [entry]}))
    app = create_app(make_settings(redis_url, dev_api_key=None, keys_file=keys_file))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {PUBLIC_KEY}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", headers=headers) as client:
            yield client


def chat_body(max_tokens: int, stream: bool = False) -> dict[str, object]:
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


async def test_gateway_answers_429_with_headers_over_rpm(
    limited_client: httpx.AsyncClient, redis_url: str
) -> None:
    async with FakeWorker(redis_url, model="tiny"):
        ok = [await limited_client.post("/v1/chat/completions", json=chat_body(1)) for _ in range(3)]
        refused = await limited_client.post("/v1/chat/completions", json=chat_body(1))
    assert [r.status_code for r in ok] == [200, 200, 200]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in ok] == ["2", "1", "0"]
    for response in ok:
        assert response.headers["x-ratelimit-limit-requests"] == "3"
        assert response.headers["x-ratelimit-limit-tokens"] == "60"
        assert (
            "x-ratelimit-reset-requests" in response.headers
            and "x-ratelimit-reset-tokens" in response.headers
        )
        assert "x-ratelimit-remaining-tokens" in response.headers
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"


async def test_gateway_answers_429_over_tpm_and_refunds_unused_tokens(
    limited_client: httpx.AsyncClient, redis_url: str
) -> None:
    async with FakeWorker(redis_url, model="tiny"):
        # Reserves ~1 prompt token + 40: fits in 60. The fake worker uses 4 of the 40.
        first = await limited_client.post("/v1/chat/completions", json=chat_body(40, stream=True))
        assert first.status_code == 200 and first.text.endswith("data: [DONE]\n\n")
        assert int(first.headers["x-ratelimit-remaining-tokens"]) < 20
        # Had the 40 stayed reserved, this would not fit; the refund of the unused 36 makes room.
        second = await limited_client.post("/v1/chat/completions", json=chat_body(40))
        assert second.status_code == 200, second.text
        refused = await limited_client.post("/v1/chat/completions", json=chat_body(50))
        too_large = await limited_client.post("/v1/chat/completions", json=chat_body(500))
    assert refused.status_code == 429
    assert "tokens per minute" in refused.json()["error"]["message"]
    assert int(refused.headers["retry-after"]) >= 1
    assert int(refused.headers["x-ratelimit-remaining-tokens"]) < 60  # less than the 50 + prompt asked
    assert too_large.status_code == 429 and too_large.json()["error"]["code"] == "request_too_large"


async def test_a_full_class_queue_is_a_fast_503_with_retry_after(
    redis_url: str, redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUSSTOP_MAX_QUEUED_INTERACTIVE", "2")
    stream = keys.request_stream("tiny", TrafficClass.INTERACTIVE)
    # A live worker that takes nothing: two requests already wait in the interactive stream.
    beat = WorkerHeartbeat(worker_id="busy", model="tiny", max_model_len=64, time=time.time())
    await redis.set(keys.worker_key("tiny", "busy"), beat.model_dump_json(), ex=60)
    await redis.xgroup_create(stream, keys.WORKER_GROUP, id="0", mkstream=True)
    for i in range(2):
        await redis.xadd(stream, {"data": str(i)})
    entry = {"sha256": hash_key(PUBLIC_KEY), "tenant": "web", "traffic_class": "public"}
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": [entry]}))
    app = create_app(make_settings(redis_url, dev_api_key=None, keys_file=keys_file))
    headers = {"Authorization": f"Bearer {PUBLIC_KEY}"}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw", headers=headers
        ) as client,
    ):
        response = await client.post("/v1/chat/completions", json=chat_body(4))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "queue_full"
    assert response.headers["retry-after"] == "2"
    assert await redis.xlen(stream) == 2  # refused before queueing
