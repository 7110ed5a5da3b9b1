"""One script call per step: events in order, TTLs, fencing per request, acks after the final event; resume
reads it back. On a cluster each request is written in its own slot."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from shared import keys
from shared.messages import DATA_FIELD, ErrorInfo, ReplyEvent, ReplyKind, TrafficClass
from shared.redis_client import connect
from worker.service import intake
from worker.service.replies import HeldMessage, ReplyBatch
from worker.service.resume import take_over


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    await intake.ensure_groups(client, "m")
    yield client
    await client.aclose()


async def held_message(redis: Redis) -> HeldMessage:
    await redis.xadd(keys.request_stream("m", TrafficClass.INTERACTIVE), {DATA_FIELD: "{}"})
    (msg,) = await intake.read_new(redis, "m", "w", count=1, block_ms=None)
    return msg.message


async def events(redis: Redis, req_id: str) -> list[ReplyEvent]:
    entries = await redis.xrange(keys.reply_stream(req_id))
    return [ReplyEvent.model_validate_json(fields[DATA_FIELD]) for _, fields in entries]


async def test_batch_writes_events_in_order_and_acks_and_deletes_finished_requests(redis: Redis) -> None:
    message = await held_message(redis)
    batch = ReplyBatch()
    batch.add("a", ReplyEvent(seq=0, kind=ReplyKind.ACCEPTED, worker_id="w"))
    batch.add("b", ReplyEvent(seq=5, kind=ReplyKind.DELTA, text="x", token_ids=[7]))
    batch.add("a", ReplyEvent(seq=1, kind=ReplyKind.DELTA, text="hi", token_ids=[1, 2]))
    batch.add("a", ReplyEvent(seq=2, kind=ReplyKind.DONE, finish_reason="length"))
    batch.finish("a", message)
    await batch.write(redis, "w")

    assert [(e.seq, e.kind, e.text) for e in await events(redis, "a")] == [
        (0, ReplyKind.ACCEPTED, ""),
        (1, ReplyKind.DELTA, "hi"),
        (2, ReplyKind.DONE, ""),
    ]
    assert 0 < await redis.ttl(keys.reply_stream("a")) <= keys.REPLY_DONE_TTL_S
    assert keys.REPLY_DONE_TTL_S < await redis.ttl(keys.reply_stream("b")) <= keys.REPLY_TTL_S
    assert (await redis.xpending(message.stream, keys.WORKER_GROUP))["pending"] == 0
    assert await redis.xrange(message.stream, message.msg_id, message.msg_id) == []


async def test_a_step_of_many_requests_is_one_script_call_with_one_owner_read(redis: Redis) -> None:
    batch = ReplyBatch()
    for i in range(40):
        batch.add(f"r{i}", ReplyEvent(seq=0, kind=ReplyKind.ACCEPTED, worker_id="w"))
    await batch.write(redis, "w")  # the first write of each: the owners are set
    await redis.config_resetstat()
    step = ReplyBatch()
    for i in range(40):
        step.add(f"r{i}", ReplyEvent(seq=1, kind=ReplyKind.DELTA, text=str(i), token_ids=[i]))
    assert await step.write(redis, "w") == set()

    stats = await redis.info("commandstats")
    calls = {n.removeprefix("cmdstat_"): int(v["calls"]) for n, v in stats.items()
             if not n.startswith("cmdstat_config")}  # Redis 7 counts config|resetstat
    assert calls == {"evalsha": 1, "mget": 1, "xadd": 40}  # no per-request GET, SET or EXPIRE mid-reply
    assert [e.text for e in await events(redis, "r39")] == ["", "39"]


async def test_the_stream_expiry_is_armed_on_the_first_and_final_writes_and_when_the_owner_lapsed(
        redis: Redis) -> None:
    async def write(seq: int, final: bool = False) -> None:
        batch = ReplyBatch()
        batch.add("c", ReplyEvent(seq=seq, kind=ReplyKind.DELTA, text="t", token_ids=[seq]))
        if final:
            batch.finish("c", await held_message(redis))
        await batch.write(redis, "w")

    stream, owner = keys.reply_stream("c"), keys.owner_key("c")
    await write(0)
    assert keys.REPLY_DONE_TTL_S < await redis.ttl(stream) <= keys.REPLY_TTL_S
    await redis.expire(stream, 50)  # as if the reply had been running for a while
    await redis.expire(owner, 50)
    await write(1)  # a step in the middle leaves both expiries alone
    assert 0 < await redis.ttl(stream) <= 50 and 0 < await redis.ttl(owner) <= 50
    await redis.delete(owner)  # the owner lapsed (the stream with it): the next write re-arms both
    await write(2)
    assert keys.REPLY_DONE_TTL_S < await redis.ttl(stream) <= keys.REPLY_TTL_S
    assert keys.REPLY_DONE_TTL_S < await redis.ttl(owner) <= keys.REPLY_TTL_S
    await write(3, final=True)
    assert 0 < await redis.ttl(stream) <= keys.REPLY_DONE_TTL_S
    assert await redis.get(owner) == "w" and 0 < await redis.ttl(owner) <= keys.REPLY_DONE_TTL_S


async def test_an_empty_batch_writes_nothing(redis: Redis) -> None:
    await ReplyBatch().write(redis, "w")
    assert await redis.dbsize() == 3  # the three request streams


async def test_resume_state_continues_after_the_last_event(redis: Redis) -> None:
    batch = ReplyBatch()
    batch.add("r", ReplyEvent(seq=0, kind=ReplyKind.ACCEPTED, worker_id="dead"))
    batch.add("r", ReplyEvent(seq=1, kind=ReplyKind.DELTA, text="a", token_ids=[10, 11]))
    batch.add("r", ReplyEvent(seq=2, kind=ReplyKind.DELTA, text="b", token_ids=[12]))
    await batch.write(redis, "w")

    state = await take_over(redis, "r", "new")
    assert (state.next_seq, state.output_token_ids, state.text) == (3, [10, 11, 12], "ab")
    assert not state.is_finished


async def test_resume_state_of_a_finished_or_unknown_request(redis: Redis) -> None:
    batch = ReplyBatch()
    batch.add("f", ReplyEvent(seq=0, kind=ReplyKind.ERROR, error=ErrorInfo(status=400, message="no")))
    await batch.write(redis, "w")
    assert (await take_over(redis, "f", "new")).is_finished
    fresh = await take_over(redis, "nobody", "new")
    assert (fresh.next_seq, fresh.output_token_ids, fresh.is_finished) == (0, [], False)


async def test_a_worker_that_lost_a_request_writes_nothing_more_for_it_nor_acks_it(redis: Redis) -> None:
    message = await held_message(redis)
    first = ReplyBatch()
    first.add("r", ReplyEvent(seq=0, kind=ReplyKind.ACCEPTED, worker_id="old"))
    first.add("r", ReplyEvent(seq=1, kind=ReplyKind.DELTA, text="a", token_ids=[10]))
    assert await first.write(redis, "old") == set()

    state = await take_over(redis, "r", "new")  # "old" is paused; "new" takes the request over
    stale = ReplyBatch()
    stale.add("r", ReplyEvent(seq=2, kind=ReplyKind.DELTA, text="b", token_ids=[11]))
    stale.add("other", ReplyEvent(seq=0, kind=ReplyKind.ACCEPTED, worker_id="old"))
    stale.finish("r", message)
    assert await stale.write(redis, "old") == {"r"}

    assert [e.seq for e in await events(redis, "r")] == [0, 1]
    assert [e.seq for e in await events(redis, "other")] == [0]  # requests it still owns are written
    assert (await redis.xpending(message.stream, keys.WORKER_GROUP))["pending"] == 1
    resumed = ReplyBatch()
    resumed.add("r", ReplyEvent(seq=state.next_seq, kind=ReplyKind.DELTA, text="c", token_ids=[12]))
    assert await resumed.write(redis, "new") == set()
    assert [e.text for e in await events(redis, "r")] == ["", "a", "c"]


async def test_resume_reads_the_first_event_of_each_seq_as_the_gateway_does(redis: Redis) -> None:
    stream = keys.reply_stream("d")
    for seq, text in [(0, ""), (1, "a"), (2, "b"), (2, "X"), (3, "c")]:
        kind = ReplyKind.ACCEPTED if seq == 0 else ReplyKind.DELTA
        event = ReplyEvent(seq=seq, kind=kind, text=text, token_ids=[seq] if seq else [])
        await redis.xadd(stream, {DATA_FIELD: event.model_dump_json()})
    state = await take_over(redis, "d", "new")
    assert (state.next_seq, state.output_token_ids, state.text) == (4, [1, 2, 3], "abc")


async def test_on_a_cluster_each_request_is_written_and_fenced_in_its_own_slot(cluster_url: str) -> None:
    redis = connect(cluster_url, timeout_s=5.0, max_block_s=5.0, cluster=True)
    try:
        batch = ReplyBatch()
        for req_id in ("a", "b", "c"):
            batch.add(req_id, ReplyEvent(seq=0, kind=ReplyKind.ACCEPTED, worker_id="w"))
        assert await batch.write(redis, "w") == set()
        await take_over(redis, "b", "new")
        step = ReplyBatch()
        for req_id in ("a", "b", "c"):
            step.add(req_id, ReplyEvent(seq=1, kind=ReplyKind.DELTA, text=req_id, token_ids=[1]))
        assert await step.write(redis, "w") == {"b"}
        assert [e.text for e in await events(redis, "a")] == ["", "a"]
        assert [e.text for e in await events(redis, "b")] == [""]
        assert [e.text for e in await events(redis, "c")] == ["", "c"]
    finally:
        await redis.aclose()
