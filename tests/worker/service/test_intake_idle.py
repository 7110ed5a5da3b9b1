"""What a quiet worker costs Redis, on a real Redis: a read after an empty one blocks at once (a new
tenant's stream is still found), only a class a blocking read took from is polled next, and dead
peers are looked for with one heartbeat check."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from gateway.transport.enqueue import enqueue
from shared import keys
from shared.messages import DATA_FIELD, GenerateRequest, SamplingOptions, TrafficClass
from worker.service import intake

MODEL = "m"


@pytest.fixture(autouse=True)
async def groups(redis: Redis) -> None:
    await intake.ensure_groups(redis, MODEL)


async def calls(redis: Redis) -> dict[str, int]:
    """Commands run since the last reset, by name; Redis 7 names subcommands (xinfo|consumers): they
    count as their command. CONFIG RESETSTAT itself is not the code under test."""
    stats = await redis.info("commandstats")
    counts: dict[str, int] = {}
    for name, value in stats.items():
        command = name.removeprefix("cmdstat_").split("|")[0]
        if command != "config":
            counts[command] = counts.get(command, 0) + int(value["calls"])
    return counts


async def test_a_read_after_an_empty_one_blocks_at_once(redis: Redis) -> None:
    reads = intake.Intake(redis, MODEL, "w", partitions=1)
    reads.TENANT_CHECK_S = 60.0  # the tenant registries were just read
    assert await reads.read_new(4, block_ms=50) == []  # polls every class, then blocks: nothing
    await redis.config_resetstat()
    assert await reads.read_new(4, block_ms=50) == []
    assert await calls(redis) == {"xreadgroup": 1}  # the blocking read alone: no poll, no share script


async def test_a_quiet_worker_still_finds_a_new_tenants_stream(redis: Redis) -> None:
    reads = intake.Intake(redis, MODEL, "w", partitions=1)
    reads.TENANT_CHECK_S = 0.0  # the registries are read every round
    assert await reads.read_new(4, block_ms=50) == []
    await redis.config_resetstat()
    assert await reads.read_new(4, block_ms=50) == []
    assert await calls(redis) == {"hgetall": 2, "xreadgroup": 1}  # the two internal classes' registries

    request = GenerateRequest(
        req_id="new-0", model=MODEL, traffic_class=TrafficClass.BATCH, tenant="newcomer",
        prompt="x", sampling=SamplingOptions(max_tokens=4),
    )
    await enqueue(redis, request, 0)  # a tenant no read covered yet
    taken = await reads.read_new(4, block_ms=50)
    assert [m.charge.tenant if m.charge else None for m in taken] == ["newcomer"]


async def test_dead_peers_are_looked_for_with_one_heartbeat_check(redis: Redis) -> None:
    stream = keys.request_stream(MODEL, TrafficClass.INTERACTIVE)
    await redis.xadd(stream, {DATA_FIELD: "held"})
    await redis.set(keys.worker_key(MODEL, "peer"), "{}", ex=60)
    await redis.set(keys.worker_key(MODEL, "me"), "{}", ex=60)
    assert len(await intake.read_new(redis, MODEL, "peer", count=1, block_ms=None)) == 1
    me = intake.Intake(redis, MODEL, "me", partitions=1)
    await asyncio.sleep(0.1)
    assert await me.take_over(4, dead_idle_ms=50, orphan_idle_ms=60_000) == []  # the sweep: alive

    await redis.config_resetstat()
    assert await me.take_over(4, dead_idle_ms=50, orphan_idle_ms=60_000) == []
    assert await calls(redis) == {"xinfo": 1, "exists": 1}  # one stream's consumers: no sweep, no XAUTOCLAIM

    await redis.delete(keys.worker_key(MODEL, "peer"))  # the peer dies
    taken = await me.take_over(4, dead_idle_ms=50, orphan_idle_ms=60_000)
    assert [(m.data, m.is_reclaimed) for m in taken] == [("held", True)]


async def test_only_a_class_a_blocking_read_took_from_is_polled_next(redis: Redis) -> None:
    reads = intake.Intake(redis, MODEL, "w", partitions=1)
    reads.TENANT_CHECK_S = 60.0
    assert await reads.read_new(4, block_ms=50) == []
    for i in range(3):
        await redis.xadd(keys.request_stream(MODEL, TrafficClass.INTERACTIVE), {DATA_FIELD: f"i{i}"})
    assert [m.data for m in await reads.read_new(4, block_ms=50)] == ["i0"]  # the block: one per stream
    await redis.config_resetstat()
    assert [m.data for m in await reads.read_new(4, block_ms=50)] == ["i1", "i2"]
    assert await calls(redis) == {"xreadgroup": 1}  # interactive polled; no share script


async def test_a_peer_that_joined_after_the_last_sweep_and_died_is_found_at_once(redis: Redis) -> None:
    await redis.set(keys.worker_key(MODEL, "me"), "{}", ex=60)
    me = intake.Intake(redis, MODEL, "me", partitions=1)
    assert await me.take_over(4, dead_idle_ms=50, orphan_idle_ms=60_000) == []  # the sweep: no peers
    await redis.xadd(keys.request_stream(MODEL, TrafficClass.INTERACTIVE), {DATA_FIELD: "held"})
    await redis.set(keys.worker_key(MODEL, "young"), "{}", ex=60)
    assert len(await intake.read_new(redis, MODEL, "young", count=1, block_ms=None)) == 1
    await redis.delete(keys.worker_key(MODEL, "young"))  # it dies before the next sweep is due
    await asyncio.sleep(0.1)
    taken = await me.take_over(4, dead_idle_ms=50, orphan_idle_ms=60_000)
    assert [m.data for m in taken] == ["held"]
