"""One request's trip through a worker: submit it, wait for a worker to accept it, read its
events, and cancel it if the client goes away.

The HTTP status is decided by the first reply event (the contract in ``shared/messages.py``):
ACCEPTED means 200 and a stream of deltas; ERROR carries the status to answer with, so a prompt
over the context window is a real 400 in stream mode too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from redis.asyncio import Redis

from gateway.core.config import GatewaySettings
from gateway.core.errors import OpenAIError
from gateway.telemetry.request import CLIENT_CLOSED, RequestTelemetry
from gateway.transport.replies import ReplyReader
from gateway.transport.workers import WorkerRegistry
from shared import keys
from shared.messages import DATA_FIELD, CancelRequest, GenerateRequest, ReplyEvent, ReplyKind
from shared.retry import RetryPolicy

logger = logging.getLogger(__name__)

_FINAL = (ReplyKind.DONE, ReplyKind.ERROR)


class Generation:
    def __init__(
        self, redis: Redis, registry: WorkerRegistry, settings: GatewaySettings, request: GenerateRequest
    ) -> None:
        # Metrics, spans and the final log line; the worker's spans hang under this request's span.
        self.telemetry = RequestTelemetry(request)
        request = request.model_copy(update={"traceparent": self.telemetry.traceparent})
        self.request = request
        self.worker_id: str | None = None
        self.is_finished = False
        self._redis = redis
        self._registry = registry
        self._settings = settings
        self._reader = ReplyReader(redis, request.req_id)
        self._reads = RetryPolicy(deadline_s=settings.redis_retry_s)
        self._message_id: str | bytes | None = None
        self._early: list[ReplyEvent] = []  # events read together with the first one

    async def start(self) -> ReplyEvent:
        """Submit the request and return its ACCEPTED event.

        ``OpenAIError`` when the worker refuses it (its status), when the model has had no live worker
        for ``worker_wait_s`` (503), or when no worker accepts it within ``queue_timeout_s`` (503).
        """
        req = self.request
        self._message_id = await self._redis.xadd(
            keys.request_stream(req.model, req.traffic_class), {DATA_FIELD: req.model_dump_json()}
        )
        self.telemetry.enqueued()
        queued_at = time.monotonic()
        no_worker_since: float | None = None
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
            if (await self._registry.live()).has_model(req.model):
                no_worker_since = None
            elif no_worker_since is None:
                no_worker_since = now
            elif now - no_worker_since >= self._settings.worker_wait_s:
                await self._withdraw()
                raise no_live_worker(req.model)
            if now - queued_at >= self._settings.queue_timeout_s:
                await self._withdraw()
                raise OpenAIError(
                    503,
                    f"no worker accepted the request within {self._settings.queue_timeout_s:g}s",
                    code="queue_timeout",
                )

    async def events(
        self, is_disconnected: Callable[[], Awaitable[bool]] | None = None
    ) -> AsyncIterator[list[ReplyEvent]]:
        """Batches of events after ACCEPTED, up to and including DONE or ERROR.

        ``is_disconnected`` is asked once per read (not per token); when it says the client is gone,
        the request is cancelled and the iteration ends.
        """
        if self._early:
            batch, self._early = self._early, []
            self._note_all(batch)
            yield batch
        last_event_at = time.monotonic()
        while not self.is_finished:
            batch = await self._read()
            if is_disconnected is not None and await is_disconnected():
                await self.cancel()
                return
            if batch:
                last_event_at = time.monotonic()
                self._note_all(batch)
                yield batch
            elif time.monotonic() - last_event_at >= self._settings.reply_idle_timeout_s:
                self.telemetry.finish(504)
                await self.cancel()
                raise OpenAIError(
                    504,
                    f"the worker sent nothing for {self._settings.reply_idle_timeout_s:g}s",
                    code="worker_timeout",
                )

    async def _read(self) -> list[ReplyEvent]:
        """The next events, riding out a Redis outage of up to ``redis_retry_s`` (reads are idempotent)."""
        return await self._reads.run(lambda: self._reader.read(self._settings.read_block_ms), "reply read")

    async def cancel(self) -> None:
        """Tell the worker holding the request to abort it; withdraw it if no worker holds it yet."""
        if self.is_finished:
            return
        self.telemetry.finish(CLIENT_CLOSED)
        self.is_finished = True
        if self.worker_id is None:
            await self._withdraw()
            return
        await self._send_cancel(self.worker_id)

    async def _send_cancel(self, worker_id: str) -> None:
        stream = keys.control_stream(worker_id)
        cancel = CancelRequest(req_id=self.request.req_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xadd(
                stream, {DATA_FIELD: cancel.model_dump_json()}, maxlen=keys.CONTROL_MAXLEN, approximate=True
            )
            pipe.expire(stream, keys.CONTROL_TTL_S)
            await pipe.execute()

    async def _withdraw(self) -> None:
        """Delete the unaccepted request message; a worker that took it just before gets a cancel."""
        self.is_finished = True
        if self._message_id is not None:
            await self._redis.xdel(
                keys.request_stream(self.request.model, self.request.traffic_class), self._message_id
            )
        for event in await self._reader.read(None):
            if event.kind is ReplyKind.ACCEPTED and event.worker_id:
                await self._send_cancel(event.worker_id)

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


def no_live_worker(model: str) -> OpenAIError:
    return OpenAIError(
        503, f"no live worker serves model {model!r} right now; try again later", code="no_live_worker"
    )
