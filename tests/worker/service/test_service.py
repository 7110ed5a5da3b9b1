"""The worker service in-process, on a tiny random Llama and a real Redis: pull only what fits, drain."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from shared import keys
from shared.messages import (
    DATA_FIELD,
    GenerateRequest,
    ReplyEvent,
    ReplyKind,
    SamplingOptions,
    TrafficClass,
    WorkerHeartbeat,
)
from tests.worker.tiny_llama import make_engine
from worker.engine.engine import Engine
from worker.service.service import WorkerService
from worker.service.settings import WorkerSettings
from worker.tokenizer import Tokenizer

MODEL = "tiny"


def make_service(
    redis: Redis,
    redis_url: str,
    hf_model,
    tokenizer: Tokenizer,
    grace_period_s: float,
    reclaim_ms: int = 60_000,
) -> WorkerService:
    settings = WorkerSettings(
        redis_url=redis_url,
        worker_id="w-test",
        heartbeat_interval_s=0.2,
        heartbeat_ttl_s=2,
        reclaim_min_idle_ms=reclaim_ms,
        grace_period_s=grace_period_s,
    )
    engine = make_engine(hf_model, max_num_seqs=2, num_pages=512, max_model_len=512)
    return WorkerService(settings, redis, MODEL, engine, tokenizer, max_model_len=512, vocab_size=256)


async def put_requests(redis: Redis, n: int, max_tokens: int) -> None:
    for i in range(n):
        req = GenerateRequest(
            req_id=f"r{i}",
            model=MODEL,
            traffic_class=TrafficClass.BATCH,
            prompt_token_ids=[1 + i, 2, 3, 4],
            sampling=SamplingOptions(max_tokens=max_tokens, ignore_eos=True),
        )
        await redis.xadd(keys.request_stream(MODEL, TrafficClass.BATCH), {DATA_FIELD: req.model_dump_json()})


async def pending(redis: Redis, stream: str) -> int:
    return int((await redis.xpending(stream, keys.WORKER_GROUP))["pending"])


async def unread(redis: Redis, stream: str) -> int:
    """Messages no worker has taken yet (after the group's last delivered id)."""
    (group,) = await redis.xinfo_groups(stream)
    last = tuple(int(part) for part in group["last-delivered-id"].split("-"))
    ids = [tuple(int(part) for part in entry_id.split("-")) for entry_id, _ in await redis.xrange(stream)]
    return sum(1 for i in ids if i > last)


async def reply_kinds(redis: Redis, req_id: str) -> list[ReplyKind]:
    entries = await redis.xrange(keys.reply_stream(req_id))
    return [ReplyEvent.model_validate_json(fields[DATA_FIELD]).kind for _, fields in entries]


async def heartbeat(redis: Redis) -> WorkerHeartbeat | None:
    value = await redis.get(keys.worker_key(MODEL, "w-test"))
    return WorkerHeartbeat.model_validate_json(value) if value else None


async def test_a_full_worker_leaves_work_in_redis_and_a_stop_leaves_it_pending(
    redis: Redis, redis_url: str, hf_model, tokenizer: Tokenizer
) -> None:
    service = make_service(redis, redis_url, hf_model, tokenizer, grace_period_s=0.0)
    await put_requests(redis, 6, max_tokens=500)  # long enough to still run when checked
    run = asyncio.create_task(service.run())
    while (beat := await heartbeat(redis)) is None or beat.num_running < 2:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # a few more intake rounds: nothing more may be taken

    stream = keys.request_stream(MODEL, TrafficClass.BATCH)
    assert (await pending(redis, stream), await unread(redis, stream)) == (2, 4)  # the engine admits 2
    assert beat.num_waiting == 0

    service.stop()
    await asyncio.wait_for(run, 30)
    assert await pending(redis, stream) == 2  # unfinished at the end of the grace period: not acknowledged
    assert await heartbeat(redis) is None


async def test_a_full_worker_still_takes_an_interactive_request_and_preempts_batch_work_for_it(
    redis: Redis, redis_url: str, hf_model, tokenizer: Tokenizer
) -> None:
    service = make_service(redis, redis_url, hf_model, tokenizer, grace_period_s=0.0)
    await put_requests(redis, 2, max_tokens=2000)  # fill both sequence slots for the whole test
    run = asyncio.create_task(service.run())
    while (beat := await heartbeat(redis)) is None or beat.num_running < 2:
        await asyncio.sleep(0.05)

    chat = GenerateRequest(
        req_id="chat",
        model=MODEL,
        traffic_class=TrafficClass.INTERACTIVE,
        prompt_token_ids=[9, 8, 7],
        sampling=SamplingOptions(max_tokens=4, ignore_eos=True),
    )
    await redis.xadd(
        keys.request_stream(MODEL, TrafficClass.INTERACTIVE), {DATA_FIELD: chat.model_dump_json()}
    )
    while ReplyKind.DONE not in await reply_kinds(redis, "chat"):
        await asyncio.sleep(0.05)

    batch_kinds = await reply_kinds(redis, "r1")
    # Both slots held batch work: the chat request got one by preemption, not by waiting for it to end.
    assert ReplyKind.DONE not in batch_kinds
    service.stop(force=True)
    await asyncio.wait_for(run, 30)


async def test_a_stop_lets_running_requests_finish_within_the_grace_period(
    redis: Redis, redis_url: str, hf_model, tokenizer: Tokenizer
) -> None:
    service = make_service(redis, redis_url, hf_model, tokenizer, grace_period_s=60.0)
    await put_requests(redis, 2, max_tokens=20)
    run = asyncio.create_task(service.run())
    while await redis.exists(keys.reply_stream("r0"), keys.reply_stream("r1")) != 2:
        await asyncio.sleep(0.05)
    service.stop()
    await asyncio.wait_for(run, 60)

    assert await pending(redis, keys.request_stream(MODEL, TrafficClass.BATCH)) == 0
    for req_id in ("r0", "r1"):
        entries = await redis.xrange(keys.reply_stream(req_id))
        last = entries[-1][1][DATA_FIELD]
        assert '"kind":"done"' in last and '"completion_tokens":20' in last


class FailingEngine(Engine):
    def step(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("a tensor-parallel rank is gone")


async def test_an_engine_failure_leaves_requests_pending_for_other_workers(
    redis: Redis, redis_url: str, hf_model, tokenizer: Tokenizer
) -> None:
    service = make_service(redis, redis_url, hf_model, tokenizer, grace_period_s=60.0)
    service._engine_loop._engine.__class__ = FailingEngine
    await put_requests(redis, 1, max_tokens=20)
    await asyncio.wait_for(service.run(), 30)

    assert service.failed == "RuntimeError: a tensor-parallel rank is gone"
    assert await pending(redis, keys.request_stream(MODEL, TrafficClass.BATCH)) == 1
    assert await redis.xlen(keys.reply_stream("r0")) == 0  # no error for the client: another worker serves it
    assert await heartbeat(redis) is None


async def test_a_request_that_outlived_too_many_workers_is_failed(
    redis: Redis, redis_url: str, hf_model, tokenizer: Tokenizer
) -> None:
    await put_requests(redis, 1, max_tokens=20)
    stream = keys.request_stream(MODEL, TrafficClass.BATCH)
    await redis.xgroup_create(stream, keys.WORKER_GROUP, id="0")
    (msg_id,) = [
        m
        for _, entries in await redis.xreadgroup(keys.WORKER_GROUP, "dead-1", {stream: ">"})
        for m, _ in entries
    ]
    for dead in ("dead-2", "dead-3"):  # two more workers took it over and died too
        await redis.xclaim(stream, keys.WORKER_GROUP, dead, min_idle_time=0, message_ids=[msg_id])
    await asyncio.sleep(0.8)

    service = make_service(redis, redis_url, hf_model, tokenizer, grace_period_s=0.0, reclaim_ms=700)
    run = asyncio.create_task(service.run())
    while not await redis.exists(keys.reply_stream("r0")):
        await asyncio.sleep(0.05)
    service.stop()
    await asyncio.wait_for(run, 30)

    ((_, fields),) = await redis.xrange(keys.reply_stream("r0"))
    assert '"status":500' in fields[DATA_FIELD] and '"code":"worker_failed"' in fields[DATA_FIELD]
    assert await pending(redis, stream) == 0
