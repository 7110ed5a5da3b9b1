"""Per-key limits in Redis: RPM, TPM with reservation and reconciliation, concurrency, queue caps."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.ratelimit import QueueCap, QueueCapSettings, RateLimiter, RateLimits, format_duration, num_queued
from shared import keys
from shared.messages import TrafficClass


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
