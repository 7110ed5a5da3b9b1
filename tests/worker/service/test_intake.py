"""Intake against a real Redis: class order, admission count, pending until acked, reclaim."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from shared import keys
from shared.messages import DATA_FIELD, TrafficClass
from worker.service import intake

MODEL = "m"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    await intake.ensure_groups(client, MODEL)
    yield client
    await client.aclose()


async def put(redis: Redis, traffic_class: TrafficClass, data: str) -> str:
    return await redis.xadd(keys.request_stream(MODEL, traffic_class), {DATA_FIELD: data})


async def test_ensure_groups_is_idempotent(redis: Redis) -> None:
    await intake.ensure_groups(redis, MODEL)
    groups = await redis.xinfo_groups(keys.request_stream(MODEL, TrafficClass.BATCH))
    assert [g["name"] for g in groups] == [keys.WORKER_GROUP]


async def test_reads_interactive_then_priority_then_batch_up_to_count(redis: Redis) -> None:
    await put(redis, TrafficClass.BATCH, "b1")
    await put(redis, TrafficClass.PRIORITY, "p1")
    await put(redis, TrafficClass.INTERACTIVE, "i1")
    await put(redis, TrafficClass.INTERACTIVE, "i2")

    first = await intake.read_new(redis, MODEL, "w1", count=3, block_ms=None)
    assert [m.data for m in first] == ["i1", "i2", "p1"]
    rest = await intake.read_new(redis, MODEL, "w2", count=3, block_ms=None)
    assert [m.data for m in rest] == ["b1"]
    assert await intake.read_new(redis, MODEL, "w2", count=3, block_ms=None) == []


async def test_blocking_read_wakes_on_a_new_message(redis: Redis) -> None:
    reader = asyncio.create_task(intake.read_new(redis, MODEL, "w1", count=4, block_ms=5000))
    await asyncio.sleep(0.1)
    await put(redis, TrafficClass.BATCH, "late")
    taken = await reader
    assert [(m.data, m.message.stream) for m in taken] == [
        ("late", keys.request_stream(MODEL, TrafficClass.BATCH))
    ]


async def test_a_dead_workers_messages_are_reclaimed_and_held_ones_are_not(redis: Redis) -> None:
    await put(redis, TrafficClass.INTERACTIVE, "held")
    await put(redis, TrafficClass.INTERACTIVE, "orphan")
    (held,) = await intake.read_new(redis, MODEL, "alive", count=1, block_ms=None)
    (orphan,) = await intake.read_new(redis, MODEL, "dead", count=1, block_ms=None)
    await asyncio.sleep(0.3)
    await intake.refresh(redis, "alive", [held.message])

    taken = await intake.reclaim(redis, MODEL, "alive", count=10, min_idle_ms=200)
    assert [(m.data, m.is_reclaimed, m.message, m.num_deliveries) for m in taken] == [
        ("orphan", True, orphan.message, 2)
    ]
    pending = await redis.xpending_range(orphan.message.stream, keys.WORKER_GROUP, "-", "+", 10)
    assert {p["message_id"]: p["consumer"] for p in pending} == {
        held.message.msg_id: "alive",
        orphan.message.msg_id: "alive",
    }


async def test_refresh_renews_every_held_message_and_names_those_taken_or_acked(redis: Redis) -> None:
    for i in range(4):
        await put(redis, TrafficClass.INTERACTIVE, f"m{i}")
    held = [m.message for m in await intake.read_new(redis, MODEL, "w1", count=4, block_ms=None)]
    await asyncio.sleep(0.2)
    stream = held[0].stream
    await redis.xclaim(stream, keys.WORKER_GROUP, "w2", 0, [held[1].msg_id])  # taken over
    await redis.xack(stream, keys.WORKER_GROUP, held[2].msg_id)  # no longer pending
    # held[3] is left out of the refresh: a handed-back message stays pending, idle, for others

    lost = await intake.refresh(redis, "w1", held[:3])

    assert lost == [held[1], held[2]]
    pending = await redis.xpending_range(stream, keys.WORKER_GROUP, "-", "+", 10)
    idle = {p["message_id"]: (p["consumer"], p["time_since_delivered"]) for p in pending}
    assert idle[held[0].msg_id][0] == "w1" and idle[held[0].msg_id][1] < 150
    assert idle[held[1].msg_id][0] == "w2"
    assert idle[held[3].msg_id][0] == "w1" and idle[held[3].msg_id][1] >= 200


async def test_a_worker_whose_heartbeat_is_gone_loses_its_messages_at_once(redis: Redis) -> None:
    for data in ("a", "b"):
        await put(redis, TrafficClass.INTERACTIVE, data)
    await put(redis, TrafficClass.BATCH, "c")
    await redis.set(keys.worker_key(MODEL, "slow"), "{}", ex=60)  # alive, however long it takes
    (slow,) = await intake.read_new(redis, MODEL, "slow", count=1, block_ms=None)
    dead = await intake.read_new(redis, MODEL, "dead", count=2, block_ms=None)  # no heartbeat key
    await intake.read_new(redis, MODEL, "idle-dead", count=1, block_ms=None)
    await redis.set(keys.worker_key(MODEL, "claimer"), "{}", ex=60)
    await asyncio.sleep(0.1)

    taken = await intake.claim_dead(redis, MODEL, "claimer", count=10, min_idle_ms=50)
    assert sorted(m.data for m in taken) == sorted(m.data for m in dead) == ["b", "c"]
    assert all(m.is_reclaimed and m.num_deliveries == 2 for m in taken)
    pending = await redis.xpending_range(slow.message.stream, keys.WORKER_GROUP, "-", "+", 10)
    assert {p["message_id"]: p["consumer"] for p in pending} == {
        slow.message.msg_id: "slow",
        dead[0].message.msg_id: "claimer",
    }
    # A second claimer racing the first finds nothing idle enough; dead consumers with nothing
    # pending leave the group.
    assert await intake.claim_dead(redis, MODEL, "other", count=10, min_idle_ms=50) == []
    streams = intake.request_streams(MODEL)
    names = {c["name"] for s in streams for c in await redis.xinfo_consumers(s, keys.WORKER_GROUP)}
    assert "dead" not in names and "idle-dead" not in names and "slow" in names


async def test_reclaim_takes_no_more_than_count(redis: Redis) -> None:
    for i in range(3):
        await put(redis, TrafficClass.PRIORITY, f"r{i}")
    await intake.read_new(redis, MODEL, "dead", count=3, block_ms=None)
    await asyncio.sleep(0.1)
    taken = await intake.reclaim(redis, MODEL, "alive", count=2, min_idle_ms=50)
    assert [m.data for m in taken] == ["r0", "r1"]
