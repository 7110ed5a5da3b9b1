"""Reading request messages from the model's request streams as a member of the worker group.

Interactive first, then priority, then batch, and never more than the caller says it can admit.
Also the halves of reclaim: keeping our own held messages fresh, taking over at once the messages of
a worker whose heartbeat is gone, and, later, any message left idle whoever holds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared import keys
from shared.messages import DATA_FIELD, TrafficClass
from worker.service.replies import HeldMessage

CLASS_ORDER = (TrafficClass.INTERACTIVE, TrafficClass.PRIORITY, TrafficClass.BATCH)
_REFRESH_LUA = (Path(__file__).parent / "refresh.lua").read_text()


@dataclass(frozen=True)
class IntakeMessage:
    message: HeldMessage
    data: str | None  # the GenerateRequest JSON; None if the entry has no data field
    is_reclaimed: bool = False
    num_deliveries: int = 1  # times the group handed it to a worker, this one included


def request_streams(model: str, classes: tuple[TrafficClass, ...] = CLASS_ORDER) -> list[str]:
    return [keys.request_stream(model, tc) for tc in classes]


async def ensure_groups(redis: Redis, model: str) -> None:
    """Create the worker group on each request stream (and the stream) if missing."""
    for stream in request_streams(model):
        try:
            await redis.xgroup_create(stream, keys.WORKER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


def _messages(
    stream: str, entries: list[tuple[str, dict[str, str] | None]], reclaimed: bool
) -> list[IntakeMessage]:
    return [
        IntakeMessage(HeldMessage(stream, msg_id), (fields or {}).get(DATA_FIELD), reclaimed)
        for msg_id, fields in entries
    ]


async def read_new(
    redis: Redis,
    model: str,
    consumer: str,
    count: int,
    block_ms: int | None,
    classes: tuple[TrafficClass, ...] = CLASS_ORDER,
) -> list[IntakeMessage]:
    """Up to ``count`` new messages of ``classes``, higher classes first.

    Without ``block_ms`` every stream is polled in class order. With it, and nothing waiting, one
    blocking read covers all streams; it returns at most one message per stream, so it may return
    up to ``len(classes)`` messages even when ``count`` is smaller (the engine queues the extra).
    """
    streams = request_streams(model, classes)
    taken: list[IntakeMessage] = []
    for stream in streams:
        if len(taken) >= count:
            return taken
        reply: Any = await redis.xreadgroup(
            keys.WORKER_GROUP, consumer, {stream: ">"}, count=count - len(taken)
        )
        for name, entries in reply or []:
            taken.extend(_messages(name, entries, reclaimed=False))
    if taken or block_ms is None:
        return taken
    blocked: Any = await redis.xreadgroup(
        keys.WORKER_GROUP, consumer, {s: ">" for s in streams}, count=1, block=block_ms
    )
    for name, entries in blocked or []:
        taken.extend(_messages(name, entries, reclaimed=False))
    return taken


async def reclaim(
    redis: Redis, model: str, consumer: str, count: int, min_idle_ms: int
) -> list[IntakeMessage]:
    """Take over up to ``count`` messages idle longer than ``min_idle_ms`` (their worker is gone)."""
    taken: list[IntakeMessage] = []
    for stream in request_streams(model):
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
                HeldMessage(stream, msg_id), (fields or {}).get(DATA_FIELD), True, deliveries[msg_id]
            )
            for msg_id, fields in claimed
        )
    return taken


async def claim_dead(
    redis: Redis, model: str, consumer: str, count: int, min_idle_ms: int
) -> list[IntakeMessage]:
    """Take over up to ``count`` messages held by workers whose heartbeat key is gone (dead ones).

    A live worker refreshes its messages' idle time every heartbeat, so ``min_idle_ms`` (a heartbeat
    interval or so) only settles races: of two workers claiming the same message, the second finds
    it no longer idle. Dead consumers left with nothing pending are removed from the group.
    """
    taken: list[IntakeMessage] = []
    for stream in request_streams(model):
        consumers: Any = await redis.xinfo_consumers(stream, keys.WORKER_GROUP)
        others = [c for c in consumers if c["name"] != consumer]
        if not others:
            continue
        pipe = redis.pipeline(transaction=False)
        for c in others:
            pipe.exists(keys.worker_key(model, c["name"]))
        dead = [c for c, is_alive in zip(others, await pipe.execute(), strict=True) if not is_alive]
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
                    taken.append(IntakeMessage(HeldMessage(stream, msg_id), data, True, deliveries[msg_id]))
    return taken


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
    script = redis.register_script(_REFRESH_LUA)
    pipe = redis.pipeline(transaction=False)
    for stream, ids in by_stream.items():
        await script(keys=[stream], args=[keys.WORKER_GROUP, consumer, *ids], client=pipe)
    lost: list[Any] = await pipe.execute()
    return [HeldMessage(stream, i) for stream, ids in zip(by_stream, lost, strict=True) for i in ids]
