"""One blocking XREAD for every reply stream a gateway reads, instead of one per request.

A worker writes one entry per running request per step, all in one script call, so a read of all of
a gateway's streams at once wakes once per step, whatever the number of requests: at concurrency 16
that is one Redis command for 16 tokens (two before Redis 7.0, which answers a woken read with only
the stream that woke it), and one connection instead of 16 held in blocking reads.

A reader that starts while a read is in flight rings the gateway's doorbell (a stream of its own that
every read includes), so its first event does not wait for the read's timeout. Readers are held
weakly and dropped once they have their final event: a request that nobody follows costs nothing.
On a Redis Cluster every reply stream has a slot of its own, so readers read their streams directly
(``ReplyReader``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from shared import keys
from shared.retry import REDIS_ERRORS

if TYPE_CHECKING:
    from gateway.transport.replies import ReplyReader

log = logging.getLogger(__name__)

# Entries taken per stream and read: a reader that fell behind catches up in one round trip.
READ_COUNT = 1024
# After a failed read, the next waits this long (readers retry by their own policy meanwhile).
_RETRY_S = 0.05


def entry_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class ReplyMux:
    """The reply streams of one gateway's readers, read together by one task (``of`` gives the mux of
    a client; ``None`` on a cluster)."""

    _BY_CLIENT: weakref.WeakKeyDictionary[Redis, ReplyMux] = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, redis: Redis) -> ReplyMux | None:
        if isinstance(redis, RedisCluster):
            return None
        mux = cls._BY_CLIENT.get(redis)
        if mux is None:
            mux = cls._BY_CLIENT[redis] = ReplyMux(redis)
        return mux

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._readers: dict[str, weakref.WeakSet[ReplyReader]] = {}
        self._doorbell = keys.reply_doorbell(uuid.uuid4().hex)
        self._doorbell_id = "0-0"
        self._task: asyncio.Task[None] | None = None
        self._rings: set[asyncio.Task[None]] = set()
        self._is_reading = False  # a blocking read is in flight
        self._rung = False  # and the doorbell was rung for it
        self._block_ms = 1000

    def watch(self, reader: ReplyReader, block_ms: int) -> None:
        """Read ``reader``'s stream from its cursor on, until it has its final event."""
        self._block_ms = block_ms  # within the client's socket timeout (``connect``'s max_block_s)
        readers = self._readers.setdefault(reader.stream, weakref.WeakSet())
        is_new = reader not in readers
        readers.add(reader)
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._run())
        elif is_new and self._is_reading and not self._rung:
            self._rung = True
            ring = loop.create_task(self._ring())
            self._rings.add(ring)  # held, so it is not collected before it runs
            ring.add_done_callback(self._rings.discard)

    async def _ring(self) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self._doorbell, {"ring": "1"}, maxlen=1, approximate=False)
                pipe.expire(self._doorbell, keys.REPLY_DOORBELL_TTL_S)
                await pipe.execute()
        except REDIS_ERRORS as exc:  # the read in flight ends by its timeout instead
            log.debug("doorbell: %s", exc)

    def _cursors(self) -> dict[str, str]:
        """Each watched stream with the oldest cursor among its readers; drops finished readers."""
        cursors: dict[str, str] = {}
        for stream, readers in list(self._readers.items()):
            live = [r for r in readers if not r.is_finished]
            if not live:
                del self._readers[stream]
                continue
            cursors[stream] = min((r.cursor for r in live), key=entry_key)
        return cursors

    async def _run(self) -> None:
        while cursors := self._cursors():
            streams: dict[Any, Any] = {**cursors, self._doorbell: self._doorbell_id}
            self._is_reading, self._rung = True, False
            try:
                found: Any = await self._redis.xread(streams, count=READ_COUNT, block=self._block_ms)
            except REDIS_ERRORS as exc:
                self._fail(exc)
                await asyncio.sleep(_RETRY_S)
                continue
            finally:
                self._is_reading = False
            for stream, entries in found or ():
                if stream == self._doorbell:
                    self._doorbell_id = entries[-1][0]
                    continue
                for reader in list(self._readers.get(stream, ())):
                    reader.deliver(entries)

    def _fail(self, exc: BaseException) -> None:
        """Readers raise ``exc`` from their next read (and retry by their own policy). Redis refusing
        the read itself (a key of another type, say) sends every reader back to reading alone
        instead, so one bad stream fails only its own request."""
        refused = isinstance(exc, ResponseError)
        for stream, readers in list(self._readers.items()):
            for reader in list(readers):
                if refused:
                    reader.read_alone()
                else:
                    reader.fail(exc)
            if refused:
                del self._readers[stream]
