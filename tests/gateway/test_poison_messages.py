"""Unreadable entries on the streams and keys the gateway reads go through the one ``decode`` path:
a bad reply event becomes a 502 error event for its client, a bad heartbeat is skipped. The gateway
goes on serving either way."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
from redis.asyncio import Redis

from shared import keys
from shared.messages import DATA_FIELD, ReplyEvent, ReplyKind, TrafficClass, Usage, WorkerHeartbeat
from tests.gateway.fake_worker import FakeWorker

CHAT = "/v1/chat/completions"
POISON_ENTRIES = ["not json", '{"v": 7, "seq": 1, "kind": "delta"}', '{"seq": 1}']


async def beat(redis: Redis, model: str) -> None:
    heartbeat = WorkerHeartbeat(worker_id="hand", model=model, max_model_len=64, time=time.time())
    await redis.set(keys.worker_key(model, "hand"), heartbeat.model_dump_json(), ex=30)


async def answer_with(redis: Redis, model: str, poison: str) -> None:
    """Take the next request of ``model``, accept it, then write ``poison`` as its next event."""
    stream = keys.request_stream(model, TrafficClass.INTERACTIVE)
    while not (found := await redis.xread({stream: "0-0"}, count=1, block=100)):
        pass
    req_id = json.loads(found[0][1][0][1][DATA_FIELD])["req_id"]
    accepted = ReplyEvent(seq=0, kind=ReplyKind.ACCEPTED, worker_id="hand", usage=Usage(prompt_tokens=1))
    await redis.xadd(keys.reply_stream(req_id), {DATA_FIELD: accepted.model_dump_json()})
    await redis.xadd(keys.reply_stream(req_id), {DATA_FIELD: poison})


async def test_an_unreadable_reply_event_is_a_502_event_and_the_gateway_goes_on(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        for i, poison in enumerate(POISON_ENTRIES):
            model = f"hand-{i}"
            await beat(redis, model)
            await asyncio.sleep(0.1)  # the registry's cache (worker_refresh_s 0.05) sees it
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
            writer = asyncio.create_task(answer_with(redis, model, poison))
            response = await client.post(CHAT, json=body)
            await writer
            payloads = [line.removeprefix("data: ") for line in response.text.splitlines() if line]
            assert payloads[-1] == "[DONE]"
            error = json.loads(payloads[-2])["error"]
            assert error["message"] == "the worker sent an unreadable reply"
            assert error["type"] == "server_error"
    finally:
        await redis.aclose()
    async with FakeWorker(redis_url):
        ok = await client.post(CHAT, json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
    assert ok.status_code == 200


async def test_an_unreadable_heartbeat_is_skipped(client: httpx.AsyncClient, redis_url: str) -> None:
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        await redis.set(keys.worker_key("tiny", "garbage"), "not json", ex=30)
        await redis.set(keys.worker_key("tiny", "future"), '{"v": 5, "worker_id": "f"}', ex=30)
        async with FakeWorker(redis_url):
            await asyncio.sleep(0.1)
            models = (await client.get("/v1/models")).json()["data"]
            hi = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
            chat = await client.post(CHAT, json=hi)
    finally:
        await redis.aclose()
    assert [(m["id"], m["num_workers"]) for m in models] == [("tiny", 1)]
    assert chat.status_code == 200
