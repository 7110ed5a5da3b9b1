"""Reading one request's reply stream in order, without gaps or duplicates.

Blocking reads go through the gateway's ``ReplyMux`` (one XREAD for all its streams) on one Redis;
a read that must not wait, and every read on a cluster, asks Redis for this stream alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.asyncio import Redis

from gateway.transport.reply_mux import READ_COUNT, ReplyMux, entry_key
from shared import keys
from shared.messages import ErrorInfo, MessageError, ReplyEvent, ReplyKind, decode

logger = logging.getLogger(__name__)

_FINAL = (ReplyKind.DONE, ReplyKind.ERROR)


class ReplyReader:
    def __init__(self, redis: Redis, req_id: str) -> None:
        self._redis = redis
        self._mux = ReplyMux.of(redis)
        self.stream = keys.reply_stream(req_id)
        self.cursor = "0-0"  # the last entry taken from Redis
        self.is_finished = False  # its final event was taken
        self._next_seq = 0
        self._events: list[ReplyEvent] = []  # taken, not yet returned by ``read``
        self._error: BaseException | None = None
        self._arrived = asyncio.Event()

    async def read(self, block_ms: int | None) -> list[ReplyEvent]:
        """The events after the last one returned; waits up to ``block_ms`` (None: not at all) for one."""
        if self._mux is None or block_ms is None:
            found: Any = await self._redis.xread({self.stream: self.cursor}, count=READ_COUNT, block=block_ms)
            for _stream, entries in found or ():
                self.deliver(entries)
        elif not self._events and self._error is None:
            self._mux.watch(self, block_ms)
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), block_ms / 1000)
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        events, self._events = self._events, []
        return events

    def deliver(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        """Take the entries after the cursor (the mux may hand over ones already taken directly)."""
        after = entry_key(self.cursor)
        for entry_id, fields in entries:
            if entry_key(entry_id) <= after:
                continue
            self.cursor = entry_id
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
            self._events.append(event)
            self.is_finished = self.is_finished or event.kind in _FINAL
        self._arrived.set()

    def fail(self, exc: BaseException) -> None:
        """The mux's read failed: the next ``read`` raises ``exc``."""
        self._error = exc
        self._arrived.set()

    def read_alone(self) -> None:
        """Redis refused the mux's read: read this stream directly from now on."""
        self._mux = None
        self._arrived.set()


def _unreadable(seq: int) -> ReplyEvent:
    """A final ERROR in place of an unreadable entry: the client is told instead of left waiting."""
    error = ErrorInfo(status=502, message="the worker sent an unreadable reply", type="server_error")
    return ReplyEvent(seq=seq, kind=ReplyKind.ERROR, error=error)
