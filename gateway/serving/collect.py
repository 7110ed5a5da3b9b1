"""A whole completion in one response (``stream: false``, and every Batch API line): the reply
events, gathered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gateway.protocol.responses import Json
from gateway.serving.formats import ResponseFormat
from gateway.transport.generation import Generation, error_of
from shared.messages import ReplyEvent, ReplyKind, TokenLogprob, Usage


class Fold:
    """One completion's text, logprobs and token counts, gathered from its reply events in order."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._logprobs: list[TokenLogprob] | None = None
        self._num_tokens = 0
        self._num_prompt_tokens = 0

    def add(self, event: ReplyEvent) -> None:
        if event.kind is ReplyKind.ACCEPTED and event.usage is not None:
            self._num_prompt_tokens = event.usage.prompt_tokens
        if event.kind not in (ReplyKind.DELTA, ReplyKind.DONE):
            return
        self._parts.append(event.text)
        self._num_tokens += len(event.token_ids)
        if event.logprobs is not None:
            self._logprobs = self._logprobs if self._logprobs is not None else []
            self._logprobs.extend(event.logprobs)

    def response(self, fmt: ResponseFormat, done: ReplyEvent) -> tuple[Json, Usage]:
        """The response object once ``done`` (the DONE event, already added) has arrived."""
        usage = done.usage or Usage(prompt_tokens=self._num_prompt_tokens, completion_tokens=self._num_tokens)
        text = "".join(self._parts)
        return fmt.response(text, done.finish_reason or "stop", usage, self._logprobs), usage


async def collect(
    generation: Generation,
    accepted: ReplyEvent,
    fmt: ResponseFormat,
    is_disconnected: Callable[[], Awaitable[bool]],
) -> tuple[Json | None, Usage | None]:
    """The response object and its usage; ``(None, None)`` if the client left before the end."""
    fold = Fold()
    fold.add(accepted)
    async for batch in generation.events(is_disconnected):
        for event in batch:
            if event.kind is ReplyKind.ERROR:
                raise error_of(event)
            fold.add(event)
            if event.kind is ReplyKind.DONE:
                return fold.response(fmt, event)
    return None, None
