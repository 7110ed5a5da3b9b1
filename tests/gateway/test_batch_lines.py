"""Batch pieces on their own: checking input lines, and telling a line whose answer can no longer come."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.batch.lines import BatchLine, LineError, parse_lines
from gateway.batch.reply import Submitted, await_line
from gateway.batch.reply import is_lost as _is_lost
from gateway.transport.generation import Generation
from gateway.transport.workers import WorkerRegistry
from shared import keys
from shared.messages import DATA_FIELD, GenerateRequest, ReplyEvent, ReplyKind, TrafficClass
from tests.gateway.conftest import make_settings

CHAT = "/v1/chat/completions"


def line(custom_id: object = "a", **fields: object) -> bytes:
    obj = {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": {"model": "m"}, **fields}
    return json.dumps(obj).encode()


def test_each_bad_line_gets_its_own_error_and_the_rest_still_parse() -> None:
    raw = [
        line("a"),
        b"",  # blank lines are skipped, not counted
        b"[1, 2]",
        line(""),
        line("a"),
        line("b", method="GET"),
        line("c", url="/v1/completions"),
        line("d", body="hello"),
        b'{"custom_id": "e"',
        line("f"),
    ]
    parsed = list(parse_lines(raw, CHAT))
    assert [p.index for p in parsed] == list(range(9))
    assert [(p.custom_id, p.code) for p in parsed if isinstance(p, LineError)] == [
        (None, "invalid_json_line"),
        (None, "missing_custom_id"),
        ("a", "duplicate_custom_id"),
        ("b", "invalid_method"),
        ("c", "invalid_url"),
        ("d", "invalid_body"),
        (None, "invalid_json_line"),
    ]
    assert [p for p in parsed if isinstance(p, BatchLine)] == [
        BatchLine(0, "a", {"model": "m"}),
        BatchLine(8, "f", {"model": "m"}),
    ]


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def submitted(redis: Redis) -> Submitted:
    stream = keys.request_stream("m", "batch")
    await redis.xgroup_create(stream, keys.WORKER_GROUP, id="0", mkstream=True)
    msg_id = await redis.xadd(stream, {DATA_FIELD: "{}"})
    return Submitted("b-0", stream, msg_id)


async def test_a_line_is_lost_only_once_served_and_its_reply_gone(redis: Redis) -> None:
    sub = await submitted(redis)
    assert not await _is_lost(redis, sub)  # queued: a worker will take it
    await redis.xreadgroup(keys.WORKER_GROUP, "w", {sub.stream: ">"})
    assert not await _is_lost(redis, sub)  # a worker holds it
    event = ReplyEvent(seq=0, kind=ReplyKind.DONE, finish_reason="stop")
    await redis.xadd(keys.reply_stream(sub.req_id), {DATA_FIELD: event.model_dump_json()})
    await redis.xack(sub.stream, keys.WORKER_GROUP, sub.msg_id)
    assert not await _is_lost(redis, sub)  # served, and the answer is there to read
    await redis.delete(keys.reply_stream(sub.req_id))
    assert await _is_lost(redis, sub)


def generation_of(redis: Redis, redis_url: str, sub: Submitted) -> Generation:
    request = GenerateRequest(req_id=sub.req_id, model="m", traffic_class=TrafficClass.BATCH)
    return Generation(redis, WorkerRegistry(redis, 1.0), make_settings(redis_url, read_block_ms=20), request)


async def test_await_reply_ends_a_lost_line_with_an_error(redis: Redis, redis_url: str) -> None:
    sub = await submitted(redis)
    await redis.xreadgroup(keys.WORKER_GROUP, "w", {sub.stream: ">"})
    await redis.xack(sub.stream, keys.WORKER_GROUP, sub.msg_id)  # served; its reply expired unread
    generation = generation_of(redis, redis_url, sub)
    events = await await_line(generation, redis, sub, asyncio.Event(), lost_check_s=0.05)
    assert events is not None and events[-1].kind is ReplyKind.ERROR
    assert events[-1].error is not None and events[-1].error.code == "result_lost"
