"""One batch line on the request stream: submit it once, wait for its reply, stop it on cancel."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from gateway.transport.replies import ReplyReader
from shared import keys
from shared.messages import DATA_FIELD, CancelRequest, ErrorInfo, ReplyEvent, ReplyKind

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submitted:
    req_id: str
    stream: str  # the request stream it was added to
    msg_id: str  # its entry there


async def await_reply(
    redis: Redis, line: Submitted, stopping: asyncio.Event, read_block_ms: int, lost_check_s: float
) -> list[ReplyEvent] | None:
    """The line's reply events up to DONE or ERROR; ``None`` if it was stopped before any worker took it.

    Once ``stopping`` is set, the request is taken back from the stream if no worker has it yet, or the
    worker holding it is told to abort (its reply then ends with DONE, finish_reason "abort"). After
    ``lost_check_s`` of silence it checks that an answer can still come (see ``_is_lost``); if not, the
    events end with an ERROR ``result_lost``.
    """
    reader = ReplyReader(redis, line.req_id)
    events: list[ReplyEvent] = []
    worker_id: str | None = None
    is_stop_sent = False
    last_heard = time.monotonic()
    while True:
        for event in await reader.read(read_block_ms):
            last_heard = time.monotonic()
            events.append(event)
            if event.kind == ReplyKind.ACCEPTED:
                worker_id = event.worker_id
            if event.kind in (ReplyKind.DONE, ReplyKind.ERROR):
                return events
        if time.monotonic() - last_heard >= lost_check_s:
            last_heard = time.monotonic()
            if await _is_lost(redis, line):
                return [*events, _lost(len(events))]
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


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def _is_lost(redis: Redis, line: Submitted) -> bool:
    """No answer can come: a worker took the request and acknowledged it, but its reply stream is gone
    (it expired before anyone read it, e.g. while the batch waited for a new replica)."""
    if await redis.exists(keys.reply_stream(line.req_id)):
        return False
    try:
        groups = await redis.xinfo_groups(line.stream)
        pending = await redis.xpending_range(
            line.stream, keys.WORKER_GROUP, min=line.msg_id, max=line.msg_id, count=1
        )
    except ResponseError:  # no stream or group: not delivered yet
        return False
    for group in groups:
        name = group["name"]
        if (name.decode() if isinstance(name, bytes) else name) == keys.WORKER_GROUP:
            last = group["last-delivered-id"]
            last = last.decode() if isinstance(last, bytes) else last
            is_delivered = _stream_id(line.msg_id) <= _stream_id(last)
            return is_delivered and not pending
    return False


def _lost(seq: int) -> ReplyEvent:
    error = ErrorInfo(
        status=500,
        message="the request was served but its reply expired before it was read; resubmit this line",
        type="server_error",
        code="result_lost",
    )
    return ReplyEvent(seq=seq, kind=ReplyKind.ERROR, error=error)


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
