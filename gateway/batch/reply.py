"""Waiting for a submitted batch line's reply, through the same ``Generation`` as any request.

What is batch-specific: the line was put on its stream together with its state (``BatchStore``), it is
stopped when the batch is cancelled or expires, and its answer may be lost. A reply that sat unread
(e.g. while the batch waited for a new gateway replica) longer than reply streams live is gone; the
line is then answered ``result_lost`` instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from gateway.transport.generation import Generation
from shared import keys
from shared.messages import ErrorInfo, ReplyEvent, ReplyKind

_FINAL = (ReplyKind.DONE, ReplyKind.ERROR)


@dataclass(frozen=True)
class Submitted:
    req_id: str
    stream: str  # the request stream it was added to
    msg_id: str  # its entry there


async def await_line(
    generation: Generation, redis: Redis, line: Submitted, stopping: asyncio.Event, lost_check_s: float
) -> list[ReplyEvent] | None:
    """The line's reply events up to DONE or ERROR; ``None`` if it was stopped before any worker took it.

    Once ``stopping`` is set, the request is taken back from the stream if no worker has it yet, or the
    worker holding it is told to abort (its reply then ends with DONE, finish_reason "abort"). After
    ``lost_check_s`` of silence it checks that an answer can still come (``is_lost``); if not, the
    events end with an ERROR ``result_lost``.
    """
    generation.attach(line.msg_id)
    events: list[ReplyEvent] = []
    is_stop_sent = False
    last_heard = time.monotonic()
    while True:
        batch = await generation.follow()
        if batch:
            last_heard = time.monotonic()
            events += batch
            if events[-1].kind in _FINAL:
                return events
        if time.monotonic() - last_heard >= lost_check_s:
            last_heard = time.monotonic()
            if await is_lost(redis, line):
                return [*events, lost_event(len(events))]
        if not stopping.is_set() or is_stop_sent:
            continue
        if generation.worker_id is not None:
            await generation.send_cancel(generation.worker_id)
            is_stop_sent = True
        elif await generation.withdraw():
            events += await generation.follow(block=False)  # it may have finished just before
            return events if events and events[-1].kind in _FINAL else None
        # else a worker holds it but has not said ACCEPTED yet: the next reads tell which worker


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def is_lost(redis: Redis, line: Submitted) -> bool:
    """No answer can come: a worker took the request and acknowledged it, but its reply stream is gone."""
    if await redis.exists(keys.reply_stream(line.req_id)):
        return False
    stream, msg_id = line.stream, line.msg_id
    try:
        groups = await redis.xinfo_groups(stream)
        pending = await redis.xpending_range(stream, keys.WORKER_GROUP, min=msg_id, max=msg_id, count=1)
    except ResponseError:  # no stream or group: not delivered yet
        return False
    for group in groups:
        if _text(group["name"]) == keys.WORKER_GROUP:
            is_delivered = _stream_id(msg_id) <= _stream_id(_text(group["last-delivered-id"]))
            return is_delivered and not pending
    return False


def lost_event(seq: int) -> ReplyEvent:
    error = ErrorInfo(
        status=500,
        message="the request was served but its reply expired before it was read; resubmit this line",
        type="server_error",
        code="result_lost",
    )
    return ReplyEvent(seq=seq, kind=ReplyKind.ERROR, error=error)
