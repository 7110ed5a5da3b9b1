"""The worker service against bad requests and lost messages, in-process on a tiny Llama and a real Redis.

A request that fails a step fails alone (500, marked poison, never run again); a request message
that bypasses the gateway's checks is refused by the worker's own; a worker whose message another
worker reclaimed stops writing for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from redis.asyncio import Redis

from shared import keys
from shared.messages import (
    DATA_FIELD,
    GenerateRequest,
    MessageError,
    ReplyEvent,
    ReplyKind,
    SamplingOptions,
    TrafficClass,
    decode,
)
from tests.worker.service.test_service import make_service, pending
from worker.engine import runner
from worker.tokenizer import Tokenizer

MODEL = "tiny"
POISON_MIN_P = 0.123
STREAM = keys.request_stream(MODEL, TrafficClass.BATCH)


async def put(redis: Redis, req_id: str, **sampling: object) -> str:
    req = GenerateRequest(
        req_id=req_id,
        model=MODEL,
        traffic_class=TrafficClass.BATCH,
        prompt_token_ids=[5, 6, 7],
        sampling=SamplingOptions(ignore_eos=True, **sampling),  # type: ignore[arg-type]
    )
    return str(await redis.xadd(STREAM, {DATA_FIELD: req.model_dump_json()}))


async def events(redis: Redis, req_id: str) -> list[ReplyEvent]:
    """The readable events of the reply stream (a test may have planted unreadable ones)."""
    found = []
    for _, fields in await redis.xrange(keys.reply_stream(req_id)):
        with contextlib.suppress(MessageError):
            found.append(decode(ReplyEvent, fields))
    return found


async def wait_final(redis: Redis, req_id: str, timeout_s: float = 30.0) -> ReplyEvent:
    async def final() -> ReplyEvent:
        while True:
            found = [e for e in await events(redis, req_id) if e.kind in (ReplyKind.DONE, ReplyKind.ERROR)]
            if found:
                return found[0]
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(final(), timeout_s)


async def test_a_request_that_fails_a_step_fails_alone_and_is_marked_poison(
    redis: Redis, redis_url: str, hf_model, tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = runner.sample

    def sample(logits, seqs, eos_token_ids):  # type: ignore[no-untyped-def]
        if any(s.params.min_p == POISON_MIN_P for s in seqs):
            raise OverflowError("Python int too large to convert to C long")
        return real(logits, seqs, eos_token_ids)

    monkeypatch.setattr(runner, "sample", sample)
    service = make_service(redis, redis_url, hf_model, tokenizer, grace_period_s=0.0)
    await put(redis, "good", max_tokens=6)
    await put(redis, "poison", max_tokens=6, min_p=POISON_MIN_P, temperature=1.0)
    run = asyncio.create_task(service.run())

    failed = await wait_final(redis, "poison")
    assert failed.kind is ReplyKind.ERROR and failed.error is not None
    assert (failed.error.status, failed.error.code) == (500, "request_failed")
    assert "OverflowError" in failed.error.message
    assert "OverflowError" in (await redis.get(keys.poison_key("poison")) or "")
    done = await wait_final(redis, "good")
    assert done.kind is ReplyKind.DONE and done.usage is not None and done.usage.completion_tokens == 6

    await put(redis, "after", max_tokens=3)  # still serving
    assert (await wait_final(redis, "after")).kind is ReplyKind.DONE
    assert service.failed is None and not run.done()
    service.stop(force=True)
    await asyncio.wait_for(run, 30)
    assert await pending(redis, STREAM) == 0


async def test_a_reclaimed_poison_request_is_answered_not_run(
    redis: Redis, redis_url: str, hf_model, tokenizer: Tokenizer
) -> None:
    await redis.xgroup_create(STREAM, keys.WORKER_GROUP, id="0", mkstream=True)
    await put(redis, "p", max_tokens=4)
    await redis.xreadgroup(keys.WORKER_GROUP, "dead-worker", {STREAM: ">"})
    await redis.set(keys.poison_key("p"), "RuntimeError: it broke a step")
    await asyncio.sleep(0.8)

    service = make_service(redis, redis_url, hf_model, tokenizer, grace_period_s=0.0, reclaim_ms=700)
    run = asyncio.create_task(service.run())
    final = await wait_final(redis, "p")
    service.stop(force=True)
    await asyncio.wait_for(run, 30)
    assert final.kind is ReplyKind.ERROR and final.error is not None
    assert final.error.code == "request_failed" and "it broke a step" in final.error.message
    assert [e.kind for e in await events(redis, "p")] == [ReplyKind.ERROR]  # never admitted
    assert await pending(redis, STREAM) == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [("top_k", 2**63), ("seed", 2**70), ("repetition_penalty", 1e309), ("stop_token_ids", [2**70])],
)
async def test_a_message_past_the_gateways_checks_is_refused_by_the_worker(
    redis: Redis, redis_url: str, hf_model, tokenizer: Tokenizer, field: str, value: object
) -> None:
    """Written straight to the request stream, as a buggy or older gateway might."""
    await redis.xgroup_create(STREAM, keys.WORKER_GROUP, id="0", mkstream=True)
    body = json.loads(
        GenerateRequest(req_id="bad", model=MODEL, traffic_class=TrafficClass.BATCH, prompt_token_ids=[1, 2])
        .model_dump_json()
    )
    body["sampling"][field] = value
    await redis.xadd(STREAM, {DATA_FIELD: json.dumps(body).replace("Infinity", "1e309")})
    await put(redis, "fine", max_tokens=3)
    service = make_service(redis, redis_url, hf_model, tokenizer, grace_period_s=0.0)
    run = asyncio.create_task(service.run())
    refused = await wait_final(redis, "bad")
    assert (await wait_final(redis, "fine")).kind is ReplyKind.DONE
    service.stop(force=True)
    await asyncio.wait_for(run, 30)
    assert refused.kind is ReplyKind.ERROR and refused.error is not None
    assert refused.error.status == 400 and field in refused.error.message
    assert service.failed is None


async def test_a_worker_stops_writing_for_a_request_another_worker_reclaimed(
    redis: Redis, redis_url: str, hf_model, tokenizer: Tokenizer
) -> None:
    service = make_service(redis, redis_url, hf_model, tokenizer, grace_period_s=0.0)
    msg_id = await put(redis, "long", max_tokens=400)
    run = asyncio.create_task(service.run())
    while len(await events(redis, "long")) < 5:
        await asyncio.sleep(0.05)
    # Another, live worker took the message over (as after this one's pause): the next refresh sees it.
    await redis.set(keys.worker_key(MODEL, "other-worker"), "{}", ex=60)
    await redis.xclaim(STREAM, keys.WORKER_GROUP, "other-worker", min_idle_time=0, message_ids=[msg_id])
    await asyncio.sleep(1.0)  # several heartbeats
    written = len(await events(redis, "long"))
    await asyncio.sleep(1.0)
    assert len(await events(redis, "long")) == written
    assert "long" not in service._tracker.active
    (entry,) = await redis.xpending_range(STREAM, keys.WORKER_GROUP, min="-", max="+", count=10)
    assert entry["consumer"] == "other-worker"  # the refresh did not take it back
    service.stop(force=True)
    await asyncio.wait_for(run, 30)
    assert service.failed is None


POISON_REQUESTS = [
    ("not json", None),
    ('{"req_id": "p-version", "model": "tiny", "v": 2}', "p-version"),
    ('{"req_id": "p-fields", "model": "tiny", "sampling": "fast"}', "p-fields"),
    ('{"req_id": "p-missing"}', "p-missing"),
]


async def test_poison_messages_on_the_request_control_and_reply_streams_are_handled_not_fatal(
    redis: Redis, redis_url: str, hf_model, tokenizer: Tokenizer
) -> None:
    """Request stream: an error reply when the req_id is readable, acked either way. Control stream:
    skipped. A reclaimed request's reply stream: unreadable entries skipped when resuming."""
    await redis.xgroup_create(STREAM, keys.WORKER_GROUP, id="0", mkstream=True)
    # A request a dead worker started: its reply stream holds an unreadable entry among good ones.
    await put(redis, "resumed", max_tokens=4)
    await redis.xreadgroup(keys.WORKER_GROUP, "dead-worker", {STREAM: ">"})
    reply = keys.reply_stream("resumed")
    await redis.xadd(reply, {DATA_FIELD: '{"seq": 0, "kind": "accepted", "worker_id": "dead-worker"}'})
    await redis.xadd(reply, {DATA_FIELD: "garbage"})
    for data, _ in POISON_REQUESTS:
        await redis.xadd(STREAM, {DATA_FIELD: data})
    await redis.xadd(STREAM, {"no-data-field": "x"})
    await asyncio.sleep(0.8)
    service = make_service(redis, redis_url, hf_model, tokenizer, grace_period_s=0.0, reclaim_ms=700)
    run = asyncio.create_task(service.run())
    for _, req_id in POISON_REQUESTS:
        if req_id is not None:
            final = await wait_final(redis, req_id)
            assert final.kind is ReplyKind.ERROR and final.error is not None and final.error.status == 400
            assert "malformed request message" in final.error.message
    resumed = await wait_final(redis, "resumed")
    assert resumed.kind is ReplyKind.DONE and resumed.usage is not None
    assert resumed.usage.completion_tokens == 4
    control = keys.control_stream("w-test")
    for junk in ("not json", '{"v": 3, "req_id": "x"}', "{}"):
        await redis.xadd(control, {DATA_FIELD: junk})
    await redis.xadd(control, {"other": "field"})
    await put(redis, "after", max_tokens=3)
    assert (await wait_final(redis, "after")).kind is ReplyKind.DONE
    assert service.failed is None and not run.done()
    service.stop(force=True)
    await asyncio.wait_for(run, 30)
    assert await pending(redis, STREAM) == 0  # every poison message was acked
