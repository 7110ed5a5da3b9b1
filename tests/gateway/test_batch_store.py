"""BatchStore on one Redis and on a real Redis Cluster: a line goes on its stream once, a line whose
runner died while submitting it is added by the next, and a batch's life runs in its one slot."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.batch.models import Batch, BatchStatus
from gateway.batch.store import BatchStore, new_batch_id
from shared import keys
from shared.messages import DATA_FIELD, TrafficClass
from shared.redis_client import connect

STREAM = keys.request_stream("m", TrafficClass.BATCH, 3)


def adder(redis: Redis):  # type: ignore[no-untyped-def]
    async def add() -> str:
        return str(await redis.xadd(STREAM, {DATA_FIELD: "{}"}))

    return add


@pytest.fixture(params=["one redis", "cluster"])
async def redis(request: pytest.FixtureRequest) -> AsyncIterator[Redis]:
    if request.param == "cluster":
        client = connect(request.getfixturevalue("cluster_url"), 5.0, cluster=True)
    else:
        client = connect(request.getfixturevalue("redis_url"), 5.0)
    yield client
    await client.aclose()


async def test_a_line_goes_on_its_stream_once(redis: Redis) -> None:
    store = BatchStore(redis)
    first = await store.submit("b1", 0, "req-0", adder(redis))
    again = await store.submit("b1", 0, "req-0", adder(redis))
    assert first == again and first[0] == "req-0" and first[1]
    assert await redis.xlen(STREAM) == 1
    assert await store.submitted("b1") == {0: first}


async def test_a_line_marked_but_never_added_is_added_by_the_next_runner(redis: Redis) -> None:
    store = BatchStore(redis)
    await redis.hset(keys.batch_lines("b2", "submitted"), "4", "req-4")  # the runner died here
    assert await store.submitted_line("b2", 4) == ("req-4", "")
    req_id, msg_id = await store.submit("b2", 4, "req-4", adder(redis))
    assert req_id == "req-4" and [e[0] for e in await redis.xrange(STREAM)] == [msg_id]


async def test_a_batch_is_created_counted_and_ended_in_its_slot(redis: Redis) -> None:
    store = BatchStore(redis)
    batch = Batch(
        id=new_batch_id(), endpoint="/v1/chat/completions", input_file_id="file-1", completion_window="24h",
        status=BatchStatus.IN_PROGRESS, created_at=int(time.time()),
    )  # fmt: skip
    await store.create(batch, "tenant")
    assert await store.active_ids() == [batch.id]
    assert await store.record(batch.id, 0, "line 0", is_ok=True)
    assert not await store.record(batch.id, 0, "line 0", is_ok=True)  # kept once
    assert await store.transition(batch.id, (BatchStatus.IN_PROGRESS,), BatchStatus.COMPLETED)
    ended = await store.get(batch.id, "tenant")
    assert ended is not None and ended.status is BatchStatus.COMPLETED
    assert await store.active_ids() == []
    assert [b.id for b in (await store.list_batches("tenant", None, 10))[0]] == [batch.id]


async def test_a_tenants_earliest_deadline_runs_first_and_its_later_batches_wait(redis: Redis) -> None:
    store = BatchStore(redis)
    now = int(time.time())

    async def batch(tenant: str, hours: int, status: BatchStatus = BatchStatus.IN_PROGRESS) -> str:
        b = Batch(
            id=new_batch_id(), endpoint="/v1/chat/completions", input_file_id="file-1",
            completion_window=f"{hours}h", status=status, created_at=now, expires_at=now + hours * 3600,
        )  # fmt: skip
        await store.create(b, tenant)
        return b.id

    evals_late = await batch("evals", 24)
    evals_soon = await batch("evals", 2)
    curation = await batch("curation", 12)
    evals_cancelling = await batch("evals", 48, BatchStatus.CANCELLING)
    assert await store.runnable_ids() == [evals_soon, curation, evals_cancelling]
    assert await store.transition(evals_soon, (BatchStatus.IN_PROGRESS,), BatchStatus.COMPLETED)
    assert await store.runnable_ids() == [curation, evals_late, evals_cancelling]
