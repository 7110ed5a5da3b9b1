"""Reading one request's reply stream in order, without gaps or duplicates."""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio import Redis

from shared import keys
from shared.messages import ErrorInfo, MessageError, ReplyEvent, ReplyKind, decode

logger = logging.getLogger(__name__)

# Entries taken per XREAD: a worker writes one entry per request per step, so a reader that fell
# behind catches up in one round trip.
READ_COUNT = 1024


class ReplyReader:
    def __init__(self, redis: Redis, req_id: str) -> None:
        self._redis = redis
        self.stream = keys.reply_stream(req_id)
        self._last_id = "0-0"
        self._next_seq = 0

    async def read(self, block_ms: int | None) -> list[ReplyEvent]:
        """The events after the last one returned; waits up to ``block_ms`` (None: not at all) for one."""
        found: Any = await self._redis.xread({self.stream: self._last_id}, count=READ_COUNT, block=block_ms)
        events: list[ReplyEvent] = []
        for _stream, entries in found or ():
            for entry_id, fields in entries:
                self._last_id = entry_id
                try:
                    event = decode(ReplyEvent, fields)
                except MessageError as exc:  # the client is told instead of left waiting
                    logger.error("reply %s: %s", self.stream, exc)
                    event = _unreadable(self._next_seq)
                if event.seq < self._next_seq:  # written again by a worker that resumed the request
                    continue
                if event.seq > self._next_seq:
                    logger.warning("reply %s: seq %d follows %d", self.stream, event.seq, self._next_seq - 1)
                self._next_seq = event.seq + 1
                events.append(event)
        return events


def _unreadable(seq: int) -> ReplyEvent:
    """A final ERROR in place of an unreadable entry: the client is told instead of left waiting."""
    error = ErrorInfo(status=502, message="the worker sent an unreadable reply", type="server_error")
    return ReplyEvent(seq=seq, kind=ReplyKind.ERROR, error=error)
