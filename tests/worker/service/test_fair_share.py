"""Tenant shares within an internal class (VTC) on a real Redis: weights, return from idle, charging
what a blocking read took, settling at the end, and shares that hold across workers."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from redis.asyncio import Redis

from gateway.transport.enqueue import enqueue
from shared import keys
from shared.messages import GenerateRequest, SamplingOptions, TrafficClass
from worker.service import intake
from worker.service.fair_share import FairIntake
from worker.service.replies import ReplyBatch

MODEL = "m"
BATCH = TrafficClass.BATCH
COST = 4 + 60  # 16 bytes of prompt (4 tokens) and max_tokens 60


@pytest.fixture(autouse=True)
async def groups(redis: Redis) -> None:
    await intake.ensure_groups(redis, MODEL)


async def put(redis: Redis, tenant: str, num: int, weight: float = 1.0, tc: TrafficClass = BATCH) -> None:
    for i in range(num):
        request = GenerateRequest(
            req_id=f"{tenant}-{i}", model=MODEL, traffic_class=tc, tenant=tenant, tenant_weight=weight,
            prompt="x" * 16, sampling=SamplingOptions(max_tokens=60),
        )
        await enqueue(redis, request, 0)


def tenant_of(message: intake.IntakeMessage) -> str:
    assert message.charge is not None
    return message.charge.tenant


async def counters(redis: Redis) -> dict[str, float]:
    raw = await redis.hgetall(keys.virtual_tokens_key(MODEL, BATCH))
    return {k: float(v) for k, v in raw.items()}


async def test_internal_requests_wait_on_their_tenants_stream_and_interactive_on_one(redis: Redis) -> None:
    await put(redis, "evals", 1)
    await put(redis, "web", 1, tc=TrafficClass.INTERACTIVE)
    assert await redis.xlen(keys.request_stream(MODEL, BATCH, 0, "evals")) == 1
    assert await redis.xlen(keys.request_stream(MODEL, TrafficClass.INTERACTIVE)) == 1
    assert await redis.hgetall(keys.tenants_key(MODEL, BATCH)) == {"evals": "1.0"}


async def test_contending_tenants_are_served_in_proportion_to_their_weights(redis: Redis) -> None:
    await put(redis, "distill", 40, weight=2)
    await put(redis, "curation", 40, weight=1)
    fair = FairIntake(redis, MODEL, "w1")
    taken = [tenant_of(m) for _ in range(30) for m in await fair.read(BATCH, 0, 1)]
    shares = Counter(taken)
    assert shares == {"distill": 20, "curation": 10}
    assert await counters(redis) == {"distill": 20 * COST / 2, "curation": 10 * COST}


async def test_one_read_of_many_also_follows_the_shares(redis: Redis) -> None:
    await put(redis, "distill", 40, weight=2)
    await put(redis, "curation", 40, weight=1)
    taken = await FairIntake(redis, MODEL, "w1").read(BATCH, 0, 12)
    assert Counter(tenant_of(m) for m in taken) == {"distill": 8, "curation": 4}


async def test_a_tenant_back_from_idle_starts_at_the_busy_minimum_and_claims_no_backlog(redis: Redis) -> None:
    fair = FairIntake(redis, MODEL, "w1")
    await put(redis, "curation", 1)
    await fair.read(BATCH, 0, 1)  # curation ran once, long ago; then went quiet
    await put(redis, "distill", 30)
    for _ in range(10):  # distill alone: served ten times
        await fair.read(BATCH, 0, 1)
    await put(redis, "curation", 30)
    order = [tenant_of(m) for _ in range(10) for m in await fair.read(BATCH, 0, 1)]
    assert (await counters(redis))["curation"] >= 10 * COST  # lifted, not left at one request's worth
    assert Counter(order) == {"distill": 5, "curation": 5}  # it takes turns instead of ten in a row


async def test_a_tenant_returning_to_an_idle_class_starts_level_with_the_most_served(redis: Redis) -> None:
    fair = FairIntake(redis, MODEL, "w1")
    await put(redis, "distill", 5)
    await fair.read(BATCH, 0, 5)  # distill's queue is empty now: nobody is busy
    await put(redis, "curation", 1)
    await fair.read(BATCH, 0, 1)
    assert await counters(redis) == {"distill": 5 * COST, "curation": 6 * COST}


async def test_requests_a_blocking_read_took_are_charged_to_their_tenant(redis: Redis) -> None:
    blocking = intake.BlockingReads()
    fair = FairIntake(redis, MODEL, "w1")
    await fair.tenants(BATCH, 0)  # a poll saw the class, before anything was queued
    await put(redis, "evals", 1)  # registered: the next poll finds its stream
    assert [m.data for m in await intake.read_new(redis, MODEL, "w1", 4, None, fair=fair)]
    reader = asyncio.create_task(intake.read_new(redis, MODEL, "w1", 4, 5000, blocking=blocking, fair=fair))
    await asyncio.sleep(0.2)
    await put(redis, "evals", 1)
    taken = await reader
    assert [tenant_of(m) for m in taken] == ["evals"]
    assert await counters(redis) == {"evals": 2 * COST}


async def test_the_charge_is_settled_against_the_tokens_the_request_took(redis: Redis) -> None:
    await put(redis, "evals", 1, weight=2)
    [message] = await FairIntake(redis, MODEL, "w1").read(BATCH, 0, 1)
    assert message.charge is not None
    batch = ReplyBatch()
    batch.finish("evals-0", message.message)
    batch.settle("evals-0", message.charge.counters, "evals", message.charge.settlement(4 + 10))
    await batch.write(redis, "w1")  # the request stopped after 10 of its 60 tokens
    assert await counters(redis) == {"evals": (4 + 10) / 2}


async def test_shares_hold_across_workers_reading_side_by_side(redis: Redis) -> None:
    await put(redis, "distill", 60, weight=2)
    await put(redis, "curation", 60, weight=1)
    workers = [FairIntake(redis, MODEL, f"w{i}") for i in range(3)]
    taken: list[str] = []
    for _ in range(10):
        for fair in workers:
            taken += [tenant_of(m) for m in await fair.read(BATCH, 0, 2)]
    assert Counter(taken) == {"distill": 40, "curation": 20}


async def test_a_tenant_back_from_idle_is_next_even_when_it_ties_with_the_busy_minimum(redis: Redis) -> None:
    fair = FairIntake(redis, MODEL, "w1")
    await put(redis, "a-flood", 10)
    await fair.read(BATCH, 0, 3)
    await put(redis, "z-sparse", 1)  # sorts after the flood, ties with it once lifted
    [message] = await fair.read(BATCH, 0, 1)
    assert tenant_of(message) == "z-sparse"


async def test_a_blocking_read_of_higher_classes_leaves_lower_tenant_streams_alone(redis: Redis) -> None:
    """A full worker reads only classes above its work: batch tenants' requests must stay queued."""
    fair = FairIntake(redis, MODEL, "w1")
    await put(redis, "evals", 2)
    await fair.read(BATCH, 0, 1)  # the worker knows the evals stream now
    higher = (TrafficClass.INTERACTIVE, TrafficClass.PRIORITY)
    blocking = intake.BlockingReads()
    taken = await intake.read_new(redis, MODEL, "w1", 4, 200, higher, blocking=blocking, fair=fair)
    assert taken == []
    assert await redis.xlen(keys.request_stream(MODEL, BATCH, 0, "evals")) == 2
    [left] = await fair.read(BATCH, 0, 1)
    assert tenant_of(left) == "evals"


async def test_a_full_worker_reads_only_tenants_below_their_share_of_its_slots(redis: Redis) -> None:
    fair = FairIntake(redis, MODEL, "w1")
    await put(redis, "flood", 6)
    await put(redis, "sparse", 2)
    await fair.read(BATCH, 0, 2)  # one of each: both streams known, both counters level
    running = [("flood", 1.0)] * 4
    below = fair.below_share(BATCH, running, 4)
    assert below == {"sparse", ""}  # "": the class's own stream, no tenant holds a slot there
    # Two tenants active: a share is half the slots. Reads for a tenant stop at its share.
    assert fair.below_share(BATCH, running + [("sparse", 1.0)] * 2, 4) == {""}
    assert fair.below_share(BATCH, running + [("sparse", 1.0)] * 2, 6) == {"sparse", ""}
    higher = (TrafficClass.INTERACTIVE, TrafficClass.PRIORITY)
    taken = await intake.read_new(redis, MODEL, "w1", 0, 200, higher, blocking=intake.BlockingReads(),
                                  fair=fair, shares={BATCH: below})
    assert [tenant_of(m) for m in taken] == ["sparse"]
    flood_left = await redis.xlen(keys.request_stream(MODEL, BATCH, 0, "flood"))
    pending = await redis.xpending(keys.request_stream(MODEL, BATCH, 0, "flood"), keys.WORKER_GROUP)
    assert flood_left - pending["pending"] == 5  # none of the flood's queued requests was taken


async def test_a_full_worker_is_woken_by_a_request_of_a_tenant_below_its_share(redis: Redis) -> None:
    fair = FairIntake(redis, MODEL, "w1")
    await put(redis, "flood", 3)
    await put(redis, "sparse", 1)
    await fair.read(BATCH, 0, 4)  # both drained: the worker blocks
    higher = (TrafficClass.INTERACTIVE, TrafficClass.PRIORITY)
    shares = {BATCH: fair.below_share(BATCH, [("flood", 1.0)] * 3, 3)}
    blocking = intake.BlockingReads()
    read = asyncio.create_task(intake.read_new(redis, MODEL, "w1", 0, 2000, higher, blocking=blocking,
                                               fair=fair, poll=(), shares=shares))
    await asyncio.sleep(0.1)
    await put(redis, "flood", 1)  # above its share: stays queued
    await redis.xadd(keys.request_stream(MODEL, BATCH, 0, "sparse"), {"data": "{}", "cost": "1"})
    taken = await asyncio.wait_for(read, 3)
    assert [m.message.stream for m in taken] == [keys.request_stream(MODEL, BATCH, 0, "sparse")]
    blocking.cancel()


async def test_a_read_for_shares_keeps_the_counters_order(redis: Redis) -> None:
    """A full worker may take only some tenants' requests; when the counters pick another tenant next,
    it takes none (it waits for a slot) rather than serve a tenant out of turn."""
    fair = FairIntake(redis, MODEL, "w1")
    await put(redis, "distill", 4, weight=2)
    await put(redis, "curation", 4)
    [first] = await fair.read(BATCH, 0, 1, only=frozenset({"curation"}))
    assert tenant_of(first) == "curation"  # both level: a tie, the first of the two in the registry
    assert await fair.read(BATCH, 0, 1, only=frozenset({"curation"})) == []  # distill is next
    [second] = await fair.read(BATCH, 0, 1)
    assert tenant_of(second) == "distill"
