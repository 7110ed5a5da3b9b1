"""One request's trip through a worker: submit it, wait for a worker to accept it, read its
events, and cancel it if the client goes away. The chat and completion routes and the Batch API all
drive requests through this one class.

The HTTP status is decided by the first reply event (the contract in ``shared/messages.py``):
ACCEPTED means 200 and a stream of deltas; ERROR carries the status to answer with, so a prompt
over the context window is a real 400 in stream mode too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from gateway.core.config import GatewaySettings
from gateway.core.errors import OpenAIError
from gateway.telemetry.request import CLIENT_CLOSED, RequestTelemetry
from gateway.transport.enqueue import enqueue, request_stream
from gateway.transport.presence import GatewayPresence
from gateway.transport.replies import ReplyReader
from gateway.transport.workers import WorkerRegistry
from shared import keys
from shared.messages import DATA_FIELD, CancelRequest, GenerateRequest, ReplyEvent, ReplyKind
from shared.retry import REDIS_ERRORS, RetryPolicy

logger = logging.getLogger(__name__)

_FINAL = (ReplyKind.DONE, ReplyKind.ERROR)
# Silence this long makes the gateway ask Redis whether the request still exists at all (a Redis
# restart that lost its last writes may have lost it): one round trip, then an answer, not a hang.
LOST_CHECK_S = 3.0
# Cancels waiting out their resume grace (``Generation.hang_up``), held so they are not collected.
_HANGING_UP: set[asyncio.Task[None]] = set()


class Generation:
    def __init__(
        self,
        redis: Redis,
        registry: WorkerRegistry,
        settings: GatewaySettings,
        request: GenerateRequest,
        presence: GatewayPresence | None = None,
    ) -> None:
        # Metrics, spans and the final log line; the worker's spans hang under this request's span.
        self.telemetry = RequestTelemetry(request)
        request = request.model_copy(update={"traceparent": self.telemetry.traceparent})
        self.request = request
        self.worker_id: str | None = None
        self.is_finished = False
        self._redis = redis
        self._registry = registry
        self._presence = presence  # renews the request's lease while it is not finished
        self._settings = settings
        self._reader = ReplyReader(redis, request.req_id)
        self._reads = RetryPolicy(deadline_s=settings.redis_retry_s)
        self._partition = keys.partition_of(request.req_id, keys.request_partitions(settings.redis_cluster))
        self._stream = request_stream(request, self._partition)
        self._message_id: str | bytes | None = None
        self._early: list[ReplyEvent] = []  # events read together with the first one

    @property
    def req_id(self) -> str:
        return self.request.req_id

    @property
    def request_stream(self) -> str:
        return self._stream

    async def enqueue(self) -> str:
        """Put the request on its stream (``start`` does, or the Batch API's line record); the message id."""
        return await enqueue(self._redis, self.request, self._partition)

    def attach(self, message_id: str | bytes) -> None:
        """The request was put on its stream elsewhere (the Batch API records it with the line)."""
        self._message_id = message_id
        self.telemetry.enqueued()

    async def start(self) -> ReplyEvent:
        """Submit the request and return its ACCEPTED event.

        ``OpenAIError`` when the worker refuses it (its status), when the model has had no live worker
        for ``worker_wait_s`` (503), or when no worker accepts it within ``queue_timeout_s`` (503).
        """
        req = self.request
        if self._presence is None:
            self.attach(await self.enqueue())
        else:  # the lease first: a worker that takes the message finds it (not one pipeline: on a
            # cluster the two go to different nodes at once)
            lease_ms = keys.LEASE_S * 1000
            await self._redis.set(keys.request_lease(req.req_id), self._presence.gateway_id, px=lease_ms)
            message_id = await self.enqueue()
            self._presence.serve(self)
            self.attach(message_id)
        queued_at = time.monotonic()
        no_worker_since: float | None = None
        next_lost_check = queued_at + LOST_CHECK_S
        while True:
            events = await self._read()
            if events:
                first, self._early = events[0], events[1:]
                if first.kind in (ReplyKind.ACCEPTED, ReplyKind.ERROR):
                    self.telemetry.on_event(first)
                if first.kind is ReplyKind.ERROR:
                    self.is_finished = True
                    raise error_of(first)
                if first.kind is not ReplyKind.ACCEPTED:  # a worker that skipped ACCEPTED: take it as one
                    self._early.insert(0, first)
                self._note(first)
                return first
            now = time.monotonic()
            if now >= next_lost_check:
                next_lost_check = now + LOST_CHECK_S
                if await self._is_lost(is_accepted=False):
                    self.is_finished = True
                    raise lost_request()
            if (await self._registry.live()).has_model(req.model):
                no_worker_since = None
            elif no_worker_since is None:
                no_worker_since = now
            elif now - no_worker_since >= self._settings.worker_wait_s:
                await self._take_back()
                raise no_live_worker(req.model)
            if now - queued_at >= self._settings.queue_timeout_s:
                await self._take_back()
                raise OpenAIError(
                    503,
                    f"no worker accepted the request within {self._settings.queue_timeout_s:g}s",
                    code="queue_timeout",
                )

    async def resume(self) -> None:
        """Serve a request that another gateway started (its client resumed the stream here): take over
        its lease, so its worker keeps running it for this gateway; ``events`` then reads from the start."""
        if self._presence is not None:
            lease_ms = keys.LEASE_S * 1000
            await self._redis.set(keys.request_lease(self.req_id), self._presence.gateway_id, px=lease_ms)
            self._presence.serve(self)

    async def events(
        self, is_disconnected: Callable[[], Awaitable[bool]] | None = None
    ) -> AsyncGenerator[list[ReplyEvent], None]:
        """Batches of events after ACCEPTED, up to and including DONE or ERROR.

        ``is_disconnected`` is asked once per read (not per token); when it says the client is gone,
        the iteration ends (and the caller calls ``cancel`` or ``hang_up``).
        """
        if self._early:
            batch, self._early = self._early, []
            self._note_all(batch)
            yield batch
        last_event_at = next_lost_check = time.monotonic()
        while not self.is_finished:
            batch = await self._read()
            if is_disconnected is not None and await is_disconnected():
                return  # the caller cancels it, or hangs up (a stream the client may resume)
            if batch:
                last_event_at = next_lost_check = time.monotonic()
                self._note_all(batch)
                yield batch
            elif time.monotonic() - next_lost_check >= LOST_CHECK_S:
                next_lost_check = time.monotonic()
                if await self._reads.run(lambda: self._is_lost(is_accepted=True), "lost check"):
                    self.telemetry.finish(503)
                    self.is_finished = True
                    raise lost_request()
            elif time.monotonic() - last_event_at >= self._settings.reply_idle_timeout_s:
                self.telemetry.finish(504)
                await self.cancel()
                raise OpenAIError(
                    504,
                    f"the worker sent nothing for {self._settings.reply_idle_timeout_s:g}s",
                    code="worker_timeout",
                )

    async def follow(self, block: bool = True) -> list[ReplyEvent]:
        """The events read since the last call (waiting up to ``read_block_ms`` for one if ``block``),
        noted like those of ``events()``: the worker holding the request, whether it is finished."""
        batch = await self._read(block)
        self._note_all(batch)
        return batch

    async def _read(self, block: bool = True) -> list[ReplyEvent]:
        """The next events, riding out a Redis outage of up to ``redis_retry_s`` (reads are idempotent)."""
        block_ms = self._settings.read_block_ms if block else None
        return await self._reads.run(lambda: self._reader.read(block_ms), "reply read")

    async def cancel(self) -> None:
        """Tell the worker holding the request to abort it; withdraw it if no worker holds it yet."""
        if self.is_finished:
            return
        self.telemetry.finish(CLIENT_CLOSED)
        self.is_finished = True
        if self.worker_id is None:
            await self._take_back()
            return
        await self.send_cancel(self.worker_id)

    async def hang_up(self) -> None:
        """The client of this stream left: the request runs on for ``resume_grace_s``, so the client
        can resume it on any replica (``gateway/serving/resume.py``), and is cancelled after that unless
        another gateway took over its lease meanwhile."""
        grace_s = self._settings.resume_grace_s
        if self.is_finished:
            return
        if grace_s <= 0 or self._presence is None or self.worker_id is None:
            await self.cancel()
            return
        self.telemetry.finish(CLIENT_CLOSED)
        self.is_finished = True  # the presence stops renewing the lease and drops it, if still its own
        task = asyncio.get_running_loop().create_task(self._cancel_unless_resumed(grace_s, self.worker_id))
        _HANGING_UP.add(task)
        task.add_done_callback(_HANGING_UP.discard)

    async def _cancel_unless_resumed(self, grace_s: float, worker_id: str) -> None:
        await asyncio.sleep(grace_s)
        assert self._presence is not None
        try:
            holder = await self._redis.get(keys.request_lease(self.req_id))
            if holder is None or holder == self._presence.gateway_id:
                await self.send_cancel(worker_id)
        except REDIS_ERRORS as exc:  # the worker finds the request's lease gone after the outage
            logger.warning("could not cancel %s after its client left: %s", self.req_id, exc)

    async def send_cancel(self, worker_id: str) -> None:
        """Ask ``worker_id`` to abort the request; its reply then ends with DONE ``abort``."""
        stream = keys.control_stream(worker_id)
        cancel = CancelRequest(req_id=self.request.req_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xadd(
                stream, {DATA_FIELD: cancel.model_dump_json()}, maxlen=keys.CONTROL_MAXLEN, approximate=True
            )
            pipe.expire(stream, keys.CONTROL_TTL_S)
            await pipe.execute()

    async def _is_lost(self, is_accepted: bool) -> bool:
        """Whether Redis no longer has the request: neither its reply stream nor (before a worker took
        it) its message. Both are kept while it runs, so only a Redis that lost data says True."""
        if self._message_id is None:
            return False
        pipe = self._redis.pipeline(transaction=False)
        pipe.exists(self._reader.stream)
        pipe.xrange(self._stream, self._message_id, self._message_id)
        has_reply, message = await pipe.execute()
        return not has_reply and (is_accepted or not message)

    async def withdraw(self) -> bool:
        """Delete the request message; True if no worker had taken it (so none ever will)."""
        msg_id = self._message_id
        if msg_id is None:
            return True
        await self._redis.xdel(self._stream, msg_id)
        try:
            pending = await self._redis.xpending_range(
                self._stream, keys.WORKER_GROUP, min=msg_id, max=msg_id, count=1
            )
        except ResponseError:  # no worker group: no worker ever read the stream
            return True
        return not pending

    async def _take_back(self) -> None:
        """Withdraw the unaccepted request; a worker that took it just before gets a cancel."""
        self.is_finished = True
        if await self.withdraw():
            return
        for event in await self._reader.read(None):
            if event.kind is ReplyKind.ACCEPTED and event.worker_id:
                await self.send_cancel(event.worker_id)

    def _note(self, event: ReplyEvent) -> None:
        if event.kind is ReplyKind.ACCEPTED and event.worker_id:
            self.worker_id = event.worker_id  # a resumed request names its new worker
        elif event.kind in _FINAL:
            self.is_finished = True

    def _note_all(self, events: list[ReplyEvent]) -> None:
        for event in events:
            self._note(event)
            self.telemetry.on_event(event)


def error_of(event: ReplyEvent) -> OpenAIError:
    if event.error is None:
        return OpenAIError(502, "the worker failed the request without saying why", type="server_error")
    return OpenAIError.from_info(event.error)


def lost_request() -> OpenAIError:
    return OpenAIError(
        503, "the request was lost in a Redis failover or restart; send it again", code="request_lost"
    )


def no_live_worker(model: str) -> OpenAIError:
    return OpenAIError(
        503, f"no live worker serves model {model!r} right now; try again later", code="no_live_worker"
    )
