"""A whole completion in one response (``stream: false``): the reply events, gathered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gateway.protocol.responses import Json
from gateway.serving.formats import ResponseFormat
from gateway.transport.generation import Generation, error_of
from shared.messages import ReplyEvent, ReplyKind, TokenLogprob, Usage


async def collect(
    generation: Generation,
    accepted: ReplyEvent,
    fmt: ResponseFormat,
    is_disconnected: Callable[[], Awaitable[bool]],
) -> tuple[Json | None, Usage | None]:
    """The response object and its usage; ``(None, None)`` if the client left before the end."""
    parts: list[str] = []
    logprobs: list[TokenLogprob] | None = None
    num_tokens = 0
    async for batch in generation.events(is_disconnected):
        for event in batch:
            if event.kind is ReplyKind.ERROR:
                raise error_of(event)
            if event.kind not in (ReplyKind.DELTA, ReplyKind.DONE):
                continue
            parts.append(event.text)
            num_tokens += len(event.token_ids)
            if event.logprobs is not None:
                logprobs = logprobs if logprobs is not None else []
                logprobs.extend(event.logprobs)
            if event.kind is ReplyKind.DONE:
                usage = event.usage or Usage(
                    prompt_tokens=accepted.usage.prompt_tokens if accepted.usage else 0,
                    completion_tokens=num_tokens,
                )
                return fmt.response("".join(parts), event.finish_reason or "stop", usage, logprobs), usage
    return None, None
