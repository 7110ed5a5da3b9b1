"""The HTTP response of accepted generations (one per choice): an SSE stream (with a stream record, so
any replica can resume it), or the whole completion at once."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import anyio
from fastapi import Request, Response
from pydantic_core import to_json
from redis.asyncio import Redis

from gateway.serving.collect import collect
from gateway.serving.formats import ResponseFormat
from gateway.serving.resume import StreamRecord, save_record
from gateway.serving.sse import EventStreamResponse, stream_events
from gateway.telemetry.request import CLIENT_CLOSED
from gateway.traffic import Lease
from gateway.transport.generation import Generation
from shared.messages import ReplyEvent, Usage
from shared.retry import REDIS_ERRORS

# As OpenAI's API: the id to quote when asking about a request (logs and traces carry it too).
REQUEST_ID_HEADER = "x-request-id"


async def respond(
    redis: Redis,
    http: Request,
    generations: Sequence[Generation],
    accepted: Sequence[ReplyEvent],
    fmt: ResponseFormat,
    lease: Lease,
    stream: bool,
    include_usage: bool,
) -> Response:
    headers = {REQUEST_ID_HEADER: generations[0].request.req_id}
    if stream:
        await save_record(redis, StreamRecord.of(list(generations), fmt, lease))
        events = stream_events(generations, fmt, lease, include_usage, http.is_disconnected)
        return EventStreamResponse(events, headers=headers)
    usage: Usage | None = None
    try:
        body, usage = await collect(generations, accepted, fmt, http.is_disconnected)
    finally:
        with anyio.CancelScope(shield=True):
            for generation in generations:
                if not generation.is_finished:
                    with contextlib.suppress(*REDIS_ERRORS):
                        await generation.cancel()
            await lease.release(usage)
    if body is None:
        return Response(status_code=CLIENT_CLOSED)
    return Response(to_json(body), media_type="application/json", headers=headers)
