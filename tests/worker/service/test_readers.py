"""ReaderWatch against a real Redis: requests whose gateway died, or whose lease lapsed, are cancelled."""

from __future__ import annotations

import asyncio
from unittest.mock import patch

from redis.asyncio import Redis

from shared import keys
from worker.service.readers import RECHECK_S, ReaderWatch
from worker.service.replies import HeldMessage
from worker.service.tracker import ActiveRequest


def active(req_id: str, gateway_id: str | None) -> ActiveRequest:
    return ActiveRequest(
        req_id=req_id, message=HeldMessage("s", "0-1"), num_prompt_tokens=1, detokenizer=None,  # type: ignore[arg-type]
        next_seq=0, num_output_tokens=0, wants_logprobs=False, trace=None, gateway_id=gateway_id,  # type: ignore[arg-type]
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def cancelled_by_one_check(redis: Redis, requests: list[ActiveRequest]) -> list[str]:
    """What one check, long after the watch started, cancels of ``requests``."""
    cancelled: list[str] = []
    clock = Clock()
    # The clock is frozen for the whole process: the re-check of missing keys must not sleep on it.
    with patch("worker.service.readers.time.monotonic", clock), patch("worker.service.readers.RECHECK_S", 0):
        watch = ReaderWatch(redis, cancelled.append, outage_grace_s=1.5)
        clock.now += 2
        await watch.check(requests)
    return cancelled


async def test_requests_of_a_gateway_whose_key_is_gone_are_cancelled(redis: Redis) -> None:
    await redis.set(keys.gateway_key("alive"), "1", ex=60)
    requests = [active("a", "alive"), active("d1", "dead"), active("d2", "dead"), active("batch", None)]
    assert sorted(await cancelled_by_one_check(redis, requests)) == ["d1", "d2"]


async def test_on_a_cluster_a_gateway_is_gone_only_when_its_twin_key_is_gone_too(redis: Redis) -> None:
    """As when the node of one key failed over after the key lapsed there: its twin on another primary
    still proves the gateway alive."""
    own, twin = keys.gateway_keys("gw", cluster=True)
    assert own == keys.gateway_key("gw") and twin != own
    await redis.set(twin, "1", ex=60)
    cancelled: list[str] = []
    with patch("worker.service.readers.RECHECK_S", 0):
        watch = ReaderWatch(redis, cancelled.append, outage_grace_s=0, cluster=True)
        await watch.check([active("r", "gw")])
        assert cancelled == []
        await redis.delete(twin)
        await watch.check([active("r", "gw")])
    assert cancelled == ["r"]


async def test_a_gateway_key_back_a_moment_later_is_not_taken_for_a_death(redis: Redis) -> None:
    """As when a stalled cluster primary, replaced meanwhile, answers once from its stale data."""
    cancelled: list[str] = []
    watch = ReaderWatch(redis, cancelled.append, outage_grace_s=0)

    async def comes_back() -> None:
        await asyncio.sleep(RECHECK_S / 2)
        await redis.set(keys.gateway_key("gw"), "1", ex=60)

    back = asyncio.create_task(comes_back())
    await watch.check([active("r", "gw")])
    await back
    assert cancelled == []
    await redis.delete(keys.gateway_key("gw"))
    await watch.check([active("r", "gw")])
    assert cancelled == ["r"]


async def test_a_request_another_live_gateway_took_over_is_kept_and_follows_it(redis: Redis) -> None:
    await redis.set(keys.gateway_key("second"), "1", ex=60)
    await redis.set(keys.request_lease("moved"), "second", ex=60)  # a client resumed its stream there
    await redis.set(keys.request_lease("stale"), "gone-too", ex=60)
    moved = active("moved", "first")
    assert await cancelled_by_one_check(redis, [moved, active("stale", "first")]) == ["stale"]
    assert moved.gateway_id == "second"


async def test_after_an_outage_gateways_get_a_grace_period_then_leases_are_checked_once(redis: Redis) -> None:
    await redis.set(keys.request_lease("wanted"), "gw", ex=60)
    cancelled: list[str] = []
    clock = Clock()
    requests = [active("wanted", "gw"), active("given-up", "gw")]
    with patch("worker.service.readers.time.monotonic", clock), patch("worker.service.readers.RECHECK_S", 0):
        watch = ReaderWatch(redis, cancelled.append, outage_grace_s=1.5)
        watch.redis_failed()
        await watch.check(requests)  # Redis is back; the gateway has not renewed its key yet
        clock.now += 1.0
        await watch.check(requests)
        assert cancelled == []
        await redis.set(keys.gateway_key("gw"), "1", ex=60)
        clock.now += 1.0
        await watch.check(requests)
        assert cancelled == ["given-up"]  # its gateway answered it with an error while Redis was out
        await redis.delete(keys.request_lease("wanted"))
        clock.now += 1.0
        await watch.check(requests[:1])  # leases are read only after an outage, not every beat
    assert cancelled == ["given-up"]
