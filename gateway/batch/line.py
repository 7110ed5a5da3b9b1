"""One batch line on the request stream: submit it once, wait for its reply, stop it on cancel."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from gateway.transport.replies import ReplyReader
from shared import keys
from shared.messages import DATA_FIELD, CancelRequest, ReplyEvent, ReplyKind

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submitted:
    req_id: str
    stream: str  # the request stream it was added to
    msg_id: str  # its entry there


async def await_reply(
    redis: Redis, line: Submitted, stopping: asyncio.Event, read_block_ms: int
) -> list[ReplyEvent] | None:
    """The line's reply events up to DONE or ERROR; ``None`` if it was stopped before any worker took it.

    Once ``stopping`` is set, the request is taken back from the stream if no worker has it yet, or the
    worker holding it is told to abort (its reply then ends with DONE, finish_reason "abort").
    """
    reader = ReplyReader(redis, line.req_id)
    events: list[ReplyEvent] = []
    worker_id: str | None = None
    is_stop_sent = False
    while True:
        for event in await reader.read(read_block_ms):
            events.append(event)
            if event.kind == ReplyKind.ACCEPTED:
                worker_id = event.worker_id
            if event.kind in (ReplyKind.DONE, ReplyKind.ERROR):
                return events
        if not stopping.is_set() or is_stop_sent:
            continue
        if worker_id is not None:
            await send_cancel(redis, worker_id, line.req_id)
            is_stop_sent = True
        elif await _withdraw(redis, line):
            tail = await reader.read(None)  # it may have finished just before
            events += tail
            return events if any(e.kind in (ReplyKind.DONE, ReplyKind.ERROR) for e in tail) else None
        # else a worker holds it but has not said ACCEPTED yet: the next reads tell which worker


async def send_cancel(redis: Redis, worker_id: str, req_id: str) -> None:
    stream = keys.control_stream(worker_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xadd(
            stream, {DATA_FIELD: CancelRequest(req_id=req_id).model_dump_json()}, maxlen=keys.CONTROL_MAXLEN
        )
        pipe.expire(stream, keys.CONTROL_TTL_S)
        await pipe.execute()


async def _withdraw(redis: Redis, line: Submitted) -> bool:
    """Delete the request from its stream; ``True`` if no worker had taken it (so none ever will)."""
    await redis.xdel(line.stream, line.msg_id)
    try:
        pending = await redis.xpending_range(
            line.stream, keys.WORKER_GROUP, min=line.msg_id, max=line.msg_id, count=1
        )
    except ResponseError:  # no worker group: no worker ever read the stream
        return True
    return not pending
