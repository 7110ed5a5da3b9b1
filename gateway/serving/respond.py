"""The HTTP response of an accepted generation: an SSE stream, or the whole completion at once."""

from __future__ import annotations

import contextlib

import anyio
from fastapi import Request, Response
from pydantic_core import to_json

from gateway.serving.collect import collect
from gateway.serving.formats import ResponseFormat
from gateway.serving.sse import EventStreamResponse, stream_events
from gateway.telemetry.request import CLIENT_CLOSED
from gateway.traffic import Lease
from gateway.transport.generation import Generation
from shared.messages import ReplyEvent, Usage
from shared.retry import REDIS_ERRORS

# As OpenAI's API: the id to quote when asking about a request (logs and traces carry it too).
REQUEST_ID_HEADER = "x-request-id"


async def respond(
    http: Request,
    generation: Generation,
    accepted: ReplyEvent,
    fmt: ResponseFormat,
    lease: Lease,
    stream: bool,
    include_usage: bool,
) -> Response:
    headers = {REQUEST_ID_HEADER: generation.request.req_id}
    if stream:
        events = stream_events(generation, fmt, lease, include_usage, http.is_disconnected)
        return EventStreamResponse(events, headers=headers)
    usage: Usage | None = None
    try:
        body, usage = await collect(generation, accepted, fmt, http.is_disconnected)
    finally:
        with anyio.CancelScope(shield=True):
            if not generation.is_finished:
                with contextlib.suppress(*REDIS_ERRORS):
                    await generation.cancel()
            await lease.release(usage)
    if body is None:
        return Response(status_code=CLIENT_CLOSED)
    return Response(to_json(body), media_type="application/json", headers=headers)
