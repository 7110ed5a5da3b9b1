"""The gateway's reply streams read by one XREAD on a real Redis: one read per worker step whatever the
number of requests, a reader that starts mid-read woken by the doorbell, finished and forgotten
readers dropped, no event lost or repeated, one bad stream failing only its own request."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from gateway.transport.replies import ReplyReader
from shared import keys
from shared.messages import DATA_FIELD, ReplyEvent, ReplyKind

BLOCK_MS = 5000


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def write(redis: Redis, req_id: str, seq: int, kind: ReplyKind = ReplyKind.DELTA) -> None:
    event = ReplyEvent(seq=seq, kind=kind, text=f"t{seq}" if kind is ReplyKind.DELTA else "")
    await redis.xadd(keys.reply_stream(req_id), {DATA_FIELD: event.model_dump_json()})


async def xread_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_xread", {}).get("calls", 0))


async def test_sixteen_readers_take_a_step_of_events_with_one_read(redis: Redis) -> None:
    readers = [ReplyReader(redis, f"r{i}") for i in range(16)]
    for i in range(16):
        await write(redis, f"r{i}", 0, ReplyKind.ACCEPTED)
    first = await asyncio.gather(*(r.read(BLOCK_MS) for r in readers))
    assert all(len(events) == 1 for events in first)

    await redis.config_resetstat()
    for step in range(1, 6):
        pending = [asyncio.create_task(r.read(BLOCK_MS)) for r in readers]
        await asyncio.sleep(0.05)  # every reader waits on the mux's read
        async with redis.pipeline(transaction=True) as pipe:  # one step: a worker writes all at once
            for i in range(16):
                event = ReplyEvent(seq=step, kind=ReplyKind.DELTA, text=f"{i}.{step}")
                pipe.xadd(keys.reply_stream(f"r{i}"), {DATA_FIELD: event.model_dump_json()})
            await pipe.execute()
        got = await asyncio.gather(*pending)
        assert [[e.text for e in events] for events in got] == [[f"{i}.{step}"] for i in range(16)]
    # One read per step; two on a Redis before 7.0, which answers a woken read with the one stream
    # that woke it (the next read takes the other fifteen at once). Sixteen readers alone took 80.
    assert await xread_calls(redis) <= 2 * 5 + 1


async def test_a_reader_that_starts_during_a_read_is_woken_by_the_doorbell(redis: Redis) -> None:
    early = ReplyReader(redis, "early")
    waiting = asyncio.create_task(early.read(BLOCK_MS))
    await asyncio.sleep(0.1)  # the mux now blocks for BLOCK_MS on "early" alone
    late = ReplyReader(redis, "late")
    await write(redis, "late", 0, ReplyKind.ACCEPTED)
    started = time.monotonic()
    events = await late.read(BLOCK_MS)
    assert [e.kind for e in events] == [ReplyKind.ACCEPTED]
    assert time.monotonic() - started < BLOCK_MS / 1000 / 2  # not at the read's timeout
    await write(redis, "early", 0, ReplyKind.ACCEPTED)
    assert [e.kind for e in await waiting] == [ReplyKind.ACCEPTED]


async def test_no_event_is_lost_or_repeated_between_direct_and_shared_reads(redis: Redis) -> None:
    reader = ReplyReader(redis, "mixed")
    await write(redis, "mixed", 0, ReplyKind.ACCEPTED)
    await write(redis, "mixed", 1)
    assert [e.seq for e in await reader.read(None)] == [0, 1]  # direct: does not wait
    await write(redis, "mixed", 2)
    await write(redis, "mixed", 1)  # written again by a worker that resumed the request
    await write(redis, "mixed", 3, ReplyKind.DONE)
    seen: list[int] = []
    while not seen or seen[-1] != 3:
        seen += [e.seq for e in await reader.read(BLOCK_MS)]
    assert seen == [2, 3]


async def test_finished_and_forgotten_readers_stop_the_shared_read(redis: Redis) -> None:
    block_ms = 100  # a mux still reading would read about five times in the half second below
    done = ReplyReader(redis, "done")
    forgotten = ReplyReader(redis, "forgotten")
    await write(redis, "done", 0, ReplyKind.ACCEPTED)
    await write(redis, "forgotten", 0, ReplyKind.ACCEPTED)
    assert await done.read(block_ms) and await forgotten.read(block_ms)
    await write(redis, "done", 1, ReplyKind.DONE)
    assert [e.kind for e in await done.read(block_ms)] == [ReplyKind.DONE]
    del forgotten  # a request whose client left: nobody reads its stream any more
    gc.collect()
    await asyncio.sleep(0.2)  # the read in flight ends
    await redis.config_resetstat()
    await asyncio.sleep(0.5)
    assert await xread_calls(redis) == 0


async def test_a_stream_redis_refuses_to_read_fails_only_its_own_reader(redis: Redis) -> None:
    good = ReplyReader(redis, "good")
    bad = ReplyReader(redis, "bad")
    await redis.set(keys.reply_stream("bad"), "not a stream")
    await write(redis, "good", 0, ReplyKind.ACCEPTED)
    with pytest.raises(ResponseError):
        for _ in range(3):  # the shared read is refused; then its own read is
            await bad.read(BLOCK_MS)
    events: list[ReplyEvent] = []
    for _ in range(3):
        events += await good.read(BLOCK_MS)
        if events:
            break
    assert [e.kind for e in events] == [ReplyKind.ACCEPTED]
