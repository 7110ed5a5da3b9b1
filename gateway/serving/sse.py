"""Server-sent events in OpenAI's format: ``data: <chunk json>`` per chunk, then ``data: [DONE]``;
each chunk with an ``id:`` a client can resume the stream from (``event_ids``, ``resume``).

One reply batch (everything a blocking XREAD returned) becomes one write to the socket. Errors
after the 200 was sent become an ``{"error": ...}`` event, as OpenAI's streams do. A request with
``n`` choices streams them interleaved, each chunk naming its choice's ``index``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence

import anyio
from pydantic_core import to_json
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.core.errors import OpenAIError, redis_unavailable
from gateway.serving.collect import total_usage
from gateway.serving.event_ids import StreamCursor, event_id
from gateway.serving.formats import ResponseFormat
from gateway.traffic import Lease
from gateway.transport.generation import Generation, error_of
from shared.messages import ReplyEvent, ReplyKind, Usage
from shared.retry import REDIS_ERRORS

logger = logging.getLogger(__name__)

DONE_EVENT = b"data: [DONE]\n\n"


def sse_event(payload: object, event_id: bytes | None = None) -> bytes:
    head = b"id: " + event_id + b"\n" if event_id is not None else b""
    return head + b"data: " + to_json(payload) + b"\n\n"


async def _batches(
    generations: Sequence[Generation], is_disconnected: Callable[[], Awaitable[bool]]
) -> AsyncGenerator[tuple[int, list[ReplyEvent]], None]:
    """(choice index, reply batch) as they come, from every generation until each has ended."""
    if len(generations) == 1:
        async for batch in generations[0].events(is_disconnected):
            yield 0, batch
        return
    readers = [g.events(is_disconnected) for g in generations]
    pending = {asyncio.ensure_future(anext(r)): i for i, r in enumerate(readers)}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=pending.__getitem__):
                index = pending.pop(task)
                try:
                    batch = task.result()
                except StopAsyncIteration:
                    continue
                pending[asyncio.ensure_future(anext(readers[index]))] = index
                yield index, batch
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for reader in readers:
            await reader.aclose()


async def stream_events(
    generations: Sequence[Generation],
    fmt: ResponseFormat,
    lease: Lease,
    include_usage: bool,
    is_disconnected: Callable[[], Awaitable[bool]],
    after: StreamCursor | None = None,
) -> AsyncGenerator[bytes, None]:
    """The SSE body of accepted generations; hangs them up (``Generation.hang_up``) and releases
    ``lease`` however it ends.

    Each event's id is where it brings the client (``event_ids``). ``after``: a resumed stream, whose
    generations read their replies from the start: every event goes through ``fmt`` (which keeps state:
    tool calls, offsets), and only those past ``after`` are sent.
    """
    usages: dict[int, Usage] = {}
    seqs = [0] * len(generations)  # per choice, the last reply event taken in (ACCEPTED is 0)
    sent = list(after.seqs) if after is not None else [-1] * len(generations)
    try:
        if after is None:
            for index in range(len(generations)):
                first = fmt.first_chunk(index)
                if first is not None:
                    yield sse_event(first, event_id(fmt.id, seqs))
        batches = _batches(generations, is_disconnected)
        async for index, batch in batches:
            out: list[bytes] = []
            is_over = False
            for event in batch:
                seqs[index] = event.seq
                is_new = event.seq > sent[index]
                if event.kind is ReplyKind.DELTA:
                    if event.text or event.logprobs:
                        chunk = fmt.delta_chunk(index, event.text, event.logprobs, None)
                        if chunk is not None and is_new:
                            out.append(sse_event(chunk, event_id(fmt.id, seqs)))
                elif event.kind is ReplyKind.DONE:
                    usages[index] = event.usage or Usage()
                    chunk = fmt.delta_chunk(index, event.text, event.logprobs, event.finish_reason or "stop")
                    if chunk is not None and is_new:
                        out.append(sse_event(chunk, event_id(fmt.id, seqs)))
                    if len(usages) == len(generations):
                        if include_usage and not (after is not None and after.usage_sent):
                            usage = fmt.usage_chunk(_usage(usages))
                            out.append(sse_event(usage, event_id(fmt.id, seqs, usage_sent=True)))
                        out.append(DONE_EVENT)
                        is_over = True
                elif event.kind is ReplyKind.ERROR:
                    if is_new:
                        out.append(sse_event(error_of(event).body(), event_id(fmt.id, seqs)))
                    out.append(DONE_EVENT)
                    is_over = True
            if out:
                yield b"".join(out)
            if is_over:
                await batches.aclose()
                break
    except OpenAIError as exc:
        yield sse_event(exc.body()) + DONE_EVENT
    except REDIS_ERRORS as exc:
        logger.warning("redis failed mid-stream: %s", exc)
        yield sse_event(redis_unavailable(exc).body()) + DONE_EVENT
    finally:
        with anyio.CancelScope(shield=True):  # the client may be gone; cleanup must still run
            for generation in generations:
                try:
                    await generation.hang_up()
                except REDIS_ERRORS as exc:
                    logger.warning("could not cancel %s: %s", generation.request.req_id, exc)
            await lease.release(_usage(usages) if len(usages) == len(generations) else None)


def _usage(usages: dict[int, Usage]) -> Usage:
    return total_usage([usages[i] for i in sorted(usages)])


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
