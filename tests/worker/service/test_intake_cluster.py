"""Intake on a real Redis Cluster: a model's requests spread over partitions in different slots, and
a worker reads them all, in class order, blocking on every partition at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from shared import keys
from shared.messages import DATA_FIELD, TrafficClass
from shared.redis_client import connect
from worker.service import intake

MODEL = "m"
PARTITIONS = keys.request_partitions(cluster=True)


@pytest.fixture
async def redis(cluster_url: str) -> AsyncIterator[Redis]:
    client = connect(cluster_url, timeout_s=5.0, max_block_s=5.0, cluster=True)
    await intake.ensure_groups(client, MODEL, PARTITIONS)
    yield client
    await client.aclose()


async def put(redis: Redis, traffic_class: TrafficClass, data: str, partition: int) -> str:
    return await redis.xadd(keys.request_stream(MODEL, traffic_class, partition), {DATA_FIELD: data})


async def test_reads_every_partition_higher_classes_first(redis: Redis) -> None:
    for p in range(PARTITIONS):
        await put(redis, TrafficClass.BATCH, f"b{p}", p)
        await put(redis, TrafficClass.INTERACTIVE, f"i{p}", p)

    first = await intake.read_new(redis, MODEL, "w1", PARTITIONS + 1, block_ms=None, partitions=PARTITIONS)
    assert sorted(m.data for m in first[:PARTITIONS]) == sorted(f"i{p}" for p in range(PARTITIONS))
    assert first[-1].data is not None and first[-1].data.startswith("b")
    rest = await intake.read_new(redis, MODEL, "w2", count=100, block_ms=None, partitions=PARTITIONS)
    assert len(rest) == PARTITIONS - 1 and all(m.data.startswith("b") for m in rest if m.data)


async def test_a_blocking_read_wakes_on_any_partition_and_keeps_the_others_in_flight(redis: Redis) -> None:
    blocking = intake.BlockingReads()

    async def read() -> list[intake.IntakeMessage]:
        return await intake.read_new(
            redis, MODEL, "w1", count=1, block_ms=3000, partitions=PARTITIONS, blocking=blocking
        )

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await put(redis, TrafficClass.PRIORITY, "late", PARTITIONS - 1)
    taken = await reader
    assert [m.data for m in taken] == ["late"] and time.monotonic() - started < 1.0

    # The reads still blocked on the other partitions are collected by the next call, not lost.
    await put(redis, TrafficClass.BATCH, "later", 0)
    assert [m.data for m in await read()] == ["later"]
    blocking.cancel()


async def test_a_dead_workers_messages_in_every_partition_are_claimed(redis: Redis) -> None:
    for p in (0, PARTITIONS // 2, PARTITIONS - 1):
        await put(redis, TrafficClass.INTERACTIVE, f"d{p}", p)
    dead = await intake.read_new(redis, MODEL, "dead", count=3, block_ms=None, partitions=PARTITIONS)
    (held,) = await intake.read_new(
        redis, MODEL, "alive", count=1, block_ms=None, partitions=PARTITIONS
    ) or [None]  # nothing left to hold: the dead worker took all three
    assert held is None and len(dead) == 3
    await redis.set(keys.worker_key(MODEL, "alive"), "{}", ex=60)
    await asyncio.sleep(0.1)

    taken = await intake.claim_dead(redis, MODEL, "alive", count=10, min_idle_ms=50, partitions=PARTITIONS)
    assert sorted(m.data for m in taken if m.data) == sorted(m.data for m in dead if m.data)
    # Refreshing held messages runs a Lua script per stream in one cluster pipeline.
    assert await intake.refresh(redis, "alive", [m.message for m in taken]) == []
    assert await intake.refresh(redis, "dead", [m.message for m in taken]) == [m.message for m in taken]
