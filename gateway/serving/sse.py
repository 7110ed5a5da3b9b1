"""Server-sent events in OpenAI's format: ``data: <chunk json>`` per chunk, then ``data: [DONE]``.

One reply batch (everything a blocking XREAD returned) becomes one write to the socket. Errors
after the 200 was sent become an ``{"error": ...}`` event, as OpenAI's streams do.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable

import anyio
from pydantic_core import to_json
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.core.errors import OpenAIError, redis_unavailable
from gateway.serving.formats import ResponseFormat
from gateway.traffic import Lease
from gateway.transport.generation import Generation, error_of
from shared.messages import ReplyKind, Usage
from shared.retry import REDIS_ERRORS

logger = logging.getLogger(__name__)

DONE_EVENT = b"data: [DONE]\n\n"


def sse_event(payload: object) -> bytes:
    return b"data: " + to_json(payload) + b"\n\n"


async def stream_events(
    generation: Generation,
    fmt: ResponseFormat,
    lease: Lease,
    include_usage: bool,
    is_disconnected: Callable[[], Awaitable[bool]],
) -> AsyncGenerator[bytes, None]:
    """The SSE body of an accepted generation; cancels it and releases ``lease`` however it ends."""
    usage: Usage | None = None
    try:
        first = fmt.first_chunk()
        if first is not None:
            yield sse_event(first)
        async for batch in generation.events(is_disconnected):
            out: list[bytes] = []
            for event in batch:
                if event.kind is ReplyKind.DELTA:
                    if event.text or event.logprobs:
                        out.append(sse_event(fmt.delta_chunk(event.text, event.logprobs, None)))
                elif event.kind is ReplyKind.DONE:
                    usage = event.usage
                    out.append(
                        sse_event(fmt.delta_chunk(event.text, event.logprobs, event.finish_reason or "stop"))
                    )
                    if include_usage and usage is not None:
                        out.append(sse_event(fmt.usage_chunk(usage)))
                    out.append(DONE_EVENT)
                elif event.kind is ReplyKind.ERROR:
                    out.append(sse_event(error_of(event).body()))
                    out.append(DONE_EVENT)
            if out:
                yield b"".join(out)
    except OpenAIError as exc:
        yield sse_event(exc.body()) + DONE_EVENT
    except REDIS_ERRORS as exc:
        logger.warning("redis failed mid-stream: %s", exc)
        yield sse_event(redis_unavailable(exc).body()) + DONE_EVENT
    finally:
        with anyio.CancelScope(shield=True):  # the client may be gone; cleanup must still run
            try:
                await generation.cancel()
            except REDIS_ERRORS as exc:
                logger.warning("could not cancel %s: %s", generation.request.req_id, exc)
            await lease.release(usage)


class EventStreamResponse(StreamingResponse):
    """A streaming response that always closes its body generator, so the generator's cleanup
    (cancelling the request on the worker) runs even when the client vanished mid-write."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncGenerator[bytes, None], headers: dict[str, str] | None = None) -> None:
        super().__init__(
            content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})}
        )
        self._content = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._content.aclose()
