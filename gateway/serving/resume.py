"""Resuming a client's SSE stream on any gateway replica: ``GET /v1/chat/completions/{id}/stream``, or
the same POST again, with the ``Last-Event-ID`` of the last event the client got.

When a stream starts, its gateway writes a stream record. A replica that resumes it takes over the
choices' request leases (so their workers keep running them for it even when the first gateway has
died: ``worker/service/readers.py``), reads the reply streams from the start through a fresh
formatter (so the formatter's state, such as tool calls held back or logprob offsets, is rebuilt
exactly) and sends only what lies after the cursor: nothing twice, nothing missing.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from fastapi import Request
from pydantic import BaseModel
from redis.asyncio import Redis

from gateway.core.auth import Principal
from gateway.core.errors import OpenAIError
from gateway.core.state import GatewayState
from gateway.serving.event_ids import StreamCursor
from gateway.serving.formats import ChatFormat, CompletionFormat, ResponseFormat
from gateway.serving.sse import EventStreamResponse, stream_events
from gateway.traffic import Lease
from gateway.transport.generation import Generation
from shared import keys
from shared.messages import GenerateRequest, TrafficClass, Usage
from shared.retry import REDIS_ERRORS

logger = logging.getLogger(__name__)

LAST_EVENT_ID_HEADER = "last-event-id"


class StreamRecord(BaseModel):
    kind: Literal["chat", "completion"]
    id: str
    created: int
    model: str
    include_usage: bool
    parses_tool_calls: bool = False
    req_ids: list[str]
    traffic_class: TrafficClass
    tenant: str
    slot: tuple[str, str] | None = None

    @classmethod
    def of(cls, generations: list[Generation], fmt: ResponseFormat, lease: Lease) -> StreamRecord:
        first = generations[0].request
        return cls(
            kind="chat" if isinstance(fmt, ChatFormat) else "completion",
            id=fmt.id,
            created=fmt.created,
            model=fmt.model,
            include_usage=fmt.include_usage,
            parses_tool_calls=isinstance(fmt, ChatFormat) and fmt.parses_tool_calls,
            req_ids=[g.req_id for g in generations],
            traffic_class=first.traffic_class,
            tenant=first.tenant,
            slot=lease.slot,
        )

    def format(self) -> ResponseFormat:
        if self.kind == "chat":
            return ChatFormat(self.id, self.created, self.model, self.include_usage, self.parses_tool_calls)
        return CompletionFormat(self.id, self.created, self.model, self.include_usage)


async def save_record(redis: Redis, record: StreamRecord) -> None:
    await redis.set(keys.stream_record(record.id), record.model_dump_json(), ex=keys.REPLY_TTL_S)


class ResumedSlot:
    """The concurrency slot of the stream's first gateway, renewed here until the stream ends, then freed."""

    def __init__(self, redis: Redis, slot: tuple[str, str] | None) -> None:
        self._redis = redis
        self._slot = slot

    @property
    def slot(self) -> tuple[str, str] | None:
        return self._slot

    async def release(self, usage: Usage | None) -> None:
        """Never raises, as ``RateLimitLease.release``: the stream must still end cleanly (the slot's
        short lease frees it by itself)."""
        slot, self._slot = self._slot, None
        if slot is None:
            return
        try:
            await self._redis.zrem(*slot)
        except REDIS_ERRORS as exc:
            logger.warning("could not free the concurrency slot of a resumed stream: %s", exc)


def gone(completion_id: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"No stream {completion_id!r} to resume: it ended more than a while ago, or never existed.",
        type="invalid_request_error",
        code="stream_not_found",
    )


async def resume(
    state: GatewayState, http: Request, principal: Principal, completion_id: str, kind: str
) -> EventStreamResponse:
    """The rest of stream ``completion_id`` after the request's ``Last-Event-ID`` (all of it without)."""
    last_event_id = http.headers.get(LAST_EVENT_ID_HEADER)
    cursor = StreamCursor.parse(last_event_id) if last_event_id else None
    if cursor is not None and cursor.completion_id != completion_id:
        raise OpenAIError(400, "Last-Event-ID belongs to another stream", param="Last-Event-ID")
    raw = await state.redis.get(keys.stream_record(completion_id))
    record = StreamRecord.model_validate_json(raw) if raw else None
    if record is None or record.tenant != principal.tenant or record.kind != kind:
        raise gone(completion_id)
    if cursor is not None and len(cursor.seqs) != len(record.req_ids):
        raise OpenAIError(400, "Last-Event-ID does not match the stream's choices", param="Last-Event-ID")
    pipe = state.redis.pipeline(transaction=False)
    for req_id in record.req_ids:
        pipe.exists(keys.reply_stream(req_id))
    if not all(await pipe.execute()):
        raise gone(completion_id)
    generations = []
    for req_id in record.req_ids:
        request = GenerateRequest(
            req_id=req_id, model=record.model, traffic_class=record.traffic_class, tenant=record.tenant,
            arrival_time=time.time(), traceparent=http.headers.get("traceparent"),
        )  # fmt: skip
        generation = Generation(state.redis, state.workers, state.settings, request, state.presence)
        await generation.resume()
        generations.append(generation)
    lease = ResumedSlot(state.redis, record.slot)
    if state.presence is not None and lease.slot is not None:
        state.presence.hold(lease)
    events = stream_events(
        generations, record.format(), lease, record.include_usage, http.is_disconnected, after=cursor
    )
    return EventStreamResponse(events, headers={"x-request-id": record.req_ids[0]})
