"""Reading request messages from the model's request streams as a member of the worker group.

Interactive first, then priority, then batch, and never more than the caller says it can admit;
within the internal classes, tenant by tenant share (``fair_share.py``).
Also the halves of reclaim: keeping our own held messages fresh, taking over at once the messages of
a worker whose heartbeat is gone, and, later, any message left idle whoever holds it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared import keys
from shared.messages import COST_FIELD, DATA_FIELD, TrafficClass
from shared.redis_client import LuaScript, execute_loading
from worker.service.fair_share import FairIntake
from worker.service.intake_message import IntakeMessage
from worker.service.replies import HeldMessage

CLASS_ORDER = (TrafficClass.INTERACTIVE, TrafficClass.PRIORITY, TrafficClass.BATCH)
_REFRESH = LuaScript((Path(__file__).parent / "refresh.lua").read_text())


def request_streams(
    model: str, classes: tuple[TrafficClass, ...] = CLASS_ORDER, partitions: int = 1,
    fair: FairIntake | None = None,
) -> list[str]:
    """Class by class, each class's partitions in turn; then the tenant streams ``fair`` has seen."""
    streams = [keys.request_stream(model, tc, p) for tc in classes for p in range(partitions)]
    return streams + ([s for p in range(partitions) for s in fair.known_streams(p)] if fair else [])


async def ensure_groups(
    redis: Redis, model: str, partitions: int = 1, fair: FairIntake | None = None
) -> None:
    """Create the worker group on each request stream (and the stream) if missing."""
    for stream in request_streams(model, partitions=partitions, fair=fair):
        try:
            await redis.xgroup_create(stream, keys.WORKER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


def _messages(
    stream: str, entries: list[tuple[str, dict[str, str] | None]], reclaimed: bool
) -> list[IntakeMessage]:
    return [
        IntakeMessage(
            HeldMessage(stream, msg_id), (fields or {}).get(DATA_FIELD), reclaimed, cost=_cost(fields)
        )
        for msg_id, fields in entries
    ]


def _cost(fields: dict[str, str] | None) -> float | None:
    cost = (fields or {}).get(COST_FIELD)
    return None if cost is None else float(cost)


async def read_new(
    redis: Redis,
    model: str,
    consumer: str,
    count: int,
    block_ms: int | None,
    classes: tuple[TrafficClass, ...] = CLASS_ORDER,
    partitions: int = 1,
    blocking: BlockingReads | None = None,
    fair: FairIntake | None = None,
    poll: tuple[TrafficClass, ...] | None = None,
    shares: Mapping[TrafficClass, frozenset[str]] | None = None,
) -> list[IntakeMessage]:
    """Up to ``count`` new messages of ``classes``, higher classes first; and of each class in
    ``shares``, one more of the tenants named there (below their share of the engine's slots).

    Without ``block_ms`` every stream is polled in class order (partitions from a random one on, so
    none waits behind the others). With it, and nothing waiting, one blocking read per partition
    covers its streams (``blocking`` keeps those that did not return; needed with partitions). A
    blocking read returns at most one message per stream, so more than ``count`` messages may come
    back (the engine queues the extra). ``poll`` (default: ``classes``) names the classes polled
    first: the caller knows nothing is queued on the others' streams, which the blocking read covers.
    """
    first = random.randrange(partitions)
    order = [(first + i) % partitions for i in range(partitions)]
    taken: list[IntakeMessage] = []
    polled = [(tc, p) for tc in classes if poll is None or block_ms is None or tc in poll for p in order]
    for tc, p in polled:
        if len(taken) >= count:
            break
        if fair is not None and tc in keys.FAIR_CLASSES:
            taken.extend(await fair.read(tc, p, count - len(taken)))
            continue
        stream = keys.request_stream(model, tc, p)
        reply: Any = await redis.xreadgroup(
            keys.WORKER_GROUP, consumer, {stream: ">"}, count=count - len(taken)
        )
        for name, entries in reply or []:
            taken.extend(_messages(name, entries, reclaimed=False))
    shares = shares if fair is not None and shares else {}
    for tc, tenants in shares.items():
        if poll is None or block_ms is None or tc in poll:
            for p in order:
                got = await fair.read(tc, p, 1, only=tenants)  # type: ignore[union-attr]
                taken.extend(got)
                if got:
                    break
    if taken or block_ms is None:
        return taken
    if blocking is None:
        if partitions > 1:
            raise ValueError("a blocking read of several partitions needs BlockingReads")
        blocking = BlockingReads()
    groups = [[keys.request_stream(model, tc, p) for tc in classes]
              + (fair.known_streams(p, classes) if fair is not None else [])
              + [name for tc, who in shares.items() for name in fair.streams_of(p, tc, who)]  # type: ignore[union-attr]
              for p in order]
    woken = await blocking.wait(redis, consumer, groups, block_ms)
    return woken if fair is None else await fair.charge(woken)


class BlockingReads:
    """Blocking reads of several partitions at once, one per partition (a cluster serves one slot per
    command); the first that returns wakes the worker. The others stay in flight, since a read that is
    cancelled may lose the message Redis hands it, and a later ``wait`` collects them."""

    def __init__(self) -> None:
        self._in_flight: dict[tuple[str, ...], asyncio.Task[list[IntakeMessage]]] = {}

    async def wait(
        self, redis: Redis, consumer: str, groups: list[list[str]], block_ms: int
    ) -> list[IntakeMessage]:
        for streams in groups:
            if tuple(streams) not in self._in_flight:
                read = _block(redis, consumer, streams, block_ms)
                self._in_flight[tuple(streams)] = asyncio.create_task(read)
        await asyncio.wait(self._in_flight.values(), return_when=asyncio.FIRST_COMPLETED)
        taken: list[IntakeMessage] = []
        error: BaseException | None = None
        for key, task in list(self._in_flight.items()):
            if task.done():
                del self._in_flight[key]
                if task.exception() is None:
                    taken.extend(task.result())
                else:
                    error = error or task.exception()
        if error is not None and not taken:
            raise error
        return taken

    def cancel(self) -> None:
        """On shutdown: a message handed to a cancelled read is claimed by others once we are gone."""
        for task in self._in_flight.values():
            task.cancel()
        self._in_flight.clear()


async def _block(redis: Redis, consumer: str, streams: list[str], block_ms: int) -> list[IntakeMessage]:
    found: Any = await redis.xreadgroup(
        keys.WORKER_GROUP, consumer, {s: ">" for s in streams}, count=1, block=block_ms
    )
    return [m for name, entries in found or [] for m in _messages(name, entries, reclaimed=False)]


async def reclaim(
    redis: Redis, model: str, consumer: str, count: int, min_idle_ms: int, partitions: int = 1,
    fair: FairIntake | None = None,
) -> list[IntakeMessage]:
    """Take over up to ``count`` messages idle longer than ``min_idle_ms`` (their worker is gone)."""
    taken: list[IntakeMessage] = []
    for stream in request_streams(model, partitions=partitions, fair=fair):
        if len(taken) >= count:
            break
        reply: Any = await redis.xautoclaim(
            stream,
            keys.WORKER_GROUP,
            consumer,
            min_idle_time=min_idle_ms,
            start_id="0-0",
            count=count - len(taken),
        )
        # [next_start_id, claimed entries, deleted ids]; deleted ones leave the pending list by themselves.
        claimed = [e for e in reply[1] if e is not None]
        if not claimed:
            continue
        deliveries = await _num_deliveries(redis, stream, [msg_id for msg_id, _ in claimed])
        taken.extend(
            IntakeMessage(
                HeldMessage(stream, msg_id), (fields or {}).get(DATA_FIELD), True, deliveries[msg_id],
                _cost(fields),
            )
            for msg_id, fields in claimed
        )
    return taken if fair is None else [fair.with_charge(m) for m in taken]


async def claim_dead(
    redis: Redis, model: str, consumer: str, count: int, min_idle_ms: int, partitions: int = 1,
    fair: FairIntake | None = None, peers: set[str] | None = None,
) -> list[IntakeMessage]:
    """Take over up to ``count`` messages held by workers whose heartbeat key is gone (dead ones).

    A live worker refreshes its messages' idle time every heartbeat, so ``min_idle_ms`` (a heartbeat
    interval or so) only settles races: of two workers claiming the same message, the second finds
    it no longer idle. Dead consumers left with nothing pending are removed from the group; the other
    consumers seen (but this one) are added to ``peers``.
    """
    taken: list[IntakeMessage] = []
    for stream in request_streams(model, partitions=partitions, fair=fair):
        consumers: Any = await redis.xinfo_consumers(stream, keys.WORKER_GROUP)
        others = [c for c in consumers if c["name"] != consumer]
        if not others:
            continue
        pipe = redis.pipeline(transaction=False)
        for c in others:
            pipe.exists(keys.worker_key(model, c["name"]))
        alive = await pipe.execute()
        dead = [c for c, is_alive in zip(others, alive, strict=True) if not is_alive]
        if peers is not None:  # a dead one still holding messages keeps the next check sweeping
            peers.update(c["name"] for c, is_alive in zip(others, alive, strict=True)
                         if is_alive or int(c["pending"]) > 0)
        for c in dead:
            if int(c["pending"]) == 0:
                await redis.xgroup_delconsumer(stream, keys.WORKER_GROUP, c["name"])
                continue
            if len(taken) >= count:
                continue
            pending: Any = await redis.xpending_range(
                stream, keys.WORKER_GROUP, min="-", max="+", count=count - len(taken), consumername=c["name"]
            )
            deliveries = {e["message_id"]: int(e["times_delivered"]) + 1 for e in pending}
            if not deliveries:
                continue
            claimed: Any = await redis.xclaim(
                stream, keys.WORKER_GROUP, consumer, min_idle_ms, list(deliveries)
            )
            for entry in claimed:
                if entry is not None:  # None: deleted from the stream meanwhile
                    msg_id, fields = entry
                    data = (fields or {}).get(DATA_FIELD)
                    taken.append(IntakeMessage(HeldMessage(stream, msg_id), data, True, deliveries[msg_id],
                                               _cost(fields)))
    return taken if fair is None else [fair.with_charge(m) for m in taken]


async def _num_deliveries(redis: Redis, stream: str, msg_ids: list[str]) -> dict[str, int]:
    """How often each pending message was delivered; an XAUTOCLAIM counts as a delivery."""
    pipe = redis.pipeline(transaction=False)
    for msg_id in msg_ids:
        pipe.xpending_range(stream, keys.WORKER_GROUP, min=msg_id, max=msg_id, count=1)
    found: list[Any] = await pipe.execute()
    return {m: int(e[0]["times_delivered"]) if e else 1 for m, e in zip(msg_ids, found, strict=True)}


async def refresh(redis: Redis, consumer: str, messages: list[HeldMessage]) -> list[HeldMessage]:
    """Reset the idle time of messages we still hold, so no live worker reclaims them.

    Returns those we no longer hold (another worker reclaimed them while this one was paused or cut
    off from Redis): their requests must not be written for again.
    """
    by_stream: dict[str, list[str]] = {}
    for m in messages:
        by_stream.setdefault(m.stream, []).append(m.msg_id)
    if not by_stream:
        return []

    def build(pipe: Any) -> None:
        for stream, ids in by_stream.items():
            _REFRESH.queue(pipe, [stream], [keys.WORKER_GROUP, consumer, *ids])

    lost = await execute_loading(redis, build, [_REFRESH])
    return [HeldMessage(stream, i) for stream, ids in zip(by_stream, lost, strict=True) for i in ids]


class Intake:
    """The reads above, bound to one worker of one model (and its in-flight blocking reads).

    Kept cheap, since a pool's polls are Redis commands too, and cost most when little runs. A class
    is quiet once a read that covered it took fewer than it could: its streams held no more, and a
    blocking read, which covers every stream, takes what arrives later. Quiet classes are not polled
    (the internal ones only have their tenant registries read, at most every ``TENANT_CHECK_S``, to
    cover new tenants' streams). Dead peers are looked for with one XINFO CONSUMERS of the first
    stream and one EXISTS of the peers' heartbeats, and every stream is swept (XINFO CONSUMERS each)
    only when one is missing, or every ``PEER_SWEEP_S``; messages left idle are looked for six times
    per ``orphan_idle_ms``.
    """

    PEER_SWEEP_S = 5.0
    TENANT_CHECK_S = 0.5

    def __init__(self, redis: Redis, model: str, consumer: str, partitions: int) -> None:
        self._redis, self._model, self._consumer, self._partitions = redis, model, consumer, partitions
        self._blocking = BlockingReads()
        self.fair = FairIntake(redis, model, consumer)
        self._quiet: set[TrafficClass] = set()  # nothing queued on their streams but what a block takes
        self._peers: set[str] = set()  # the group's consumers seen by the last sweep, alive or holding
        self._next_sweep = 0.0
        self._next_orphan_check = 0.0
        self._next_tenant_check = 0.0

    async def ensure_groups(self) -> None:
        await ensure_groups(self._redis, self._model, self._partitions, self.fair)

    async def read_new(
        self, count: int, block_ms: int | None, classes: tuple[TrafficClass, ...] = CLASS_ORDER,
        shares: Mapping[TrafficClass, frozenset[str]] | None = None,
    ) -> list[IntakeMessage]:
        r, m, c, p = self._redis, self._model, self._consumer, self._partitions
        if any(tc in self._quiet for tc in keys.FAIR_CLASSES) and time.monotonic() >= self._next_tenant_check:
            self._next_tenant_check = time.monotonic() + self.TENANT_CHECK_S
            if await self.fair.found_new_tenants(p):
                self._quiet -= set(keys.FAIR_CLASSES)
        poll = tuple(tc for tc in classes if tc not in self._quiet)
        if any(tc in poll for tc in keys.FAIR_CLASSES):  # polling them reads their registries
            self._next_tenant_check = time.monotonic() + self.TENANT_CHECK_S
        shares = shares or {}
        taken = await read_new(r, m, c, count, block_ms, classes, p, self._blocking, self.fair, poll, shares)
        took = {keys.class_of_request_stream(msg.message.stream) for msg in taken}
        if sum(1 for msg in taken if keys.class_of_request_stream(msg.message.stream) in classes) >= count:
            self._quiet -= set(classes)  # stopped at count: more may be queued anywhere
        else:  # drained; a blocking read takes one per stream, so where it took one, more may follow
            self._quiet |= set(classes)
        self._quiet |= set(shares)  # a class read for shares took at most one: drained unless it took it
        self._quiet -= took
        return taken

    async def take_over(self, count: int, dead_idle_ms: int, orphan_idle_ms: int) -> list[IntakeMessage]:
        """Dead workers' messages first, else any message left idle whoever holds it."""
        r, m, c, p, f = self._redis, self._model, self._consumer, self._partitions, self.fair
        now = time.monotonic()
        if now >= self._next_sweep or await self._a_peer_died():
            peers: set[str] = set()
            dead = await claim_dead(r, m, c, count, dead_idle_ms, p, f, peers)
            self._peers, self._next_sweep = peers, now + self.PEER_SWEEP_S
            if dead:
                return dead
        if now < self._next_orphan_check:
            return []
        self._next_orphan_check = now + orphan_idle_ms / 6000
        return await reclaim(r, m, c, count, orphan_idle_ms, p, f)

    async def _a_peer_died(self) -> bool:
        """Whether a peer has no heartbeat: the consumers of the model's first request stream (every
        worker's blocking reads cover it, so a new peer is there at once) and those of the last sweep."""
        first = keys.request_stream(self._model, CLASS_ORDER[0], 0)
        consumers: Any = await self._redis.xinfo_consumers(first, keys.WORKER_GROUP)
        peers = self._peers | {c["name"] for c in consumers} - {self._consumer}
        if not peers:
            return False
        alive = await self._redis.exists(*(keys.worker_key(self._model, peer) for peer in peers))
        return int(alive) < len(peers)

    def close(self) -> None:
        self._blocking.cancel()
