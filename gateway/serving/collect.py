"""A whole completion in one response (``stream: false``, and every Batch API line): the reply
events of each choice, gathered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import anyio

from gateway.protocol.responses import Json
from gateway.serving.formats import Choice, ResponseFormat
from gateway.transport.generation import Generation, error_of
from shared.messages import ReplyEvent, ReplyKind, TokenLogprob, Usage


class Fold:
    """One choice's text, logprobs and token counts, gathered from its reply events in order."""

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

    def choice(self, done: ReplyEvent) -> tuple[Choice, Usage]:
        """The choice and its usage once ``done`` (the DONE event, already added) has arrived."""
        usage = done.usage or Usage(prompt_tokens=self._num_prompt_tokens, completion_tokens=self._num_tokens)
        return Choice("".join(self._parts), done.finish_reason or "stop", self._logprobs), usage


def total_usage(usages: Sequence[Usage]) -> Usage:
    """The usage of a request's choices together: one prompt, every choice's completion tokens."""
    return Usage(
        prompt_tokens=usages[0].prompt_tokens,
        completion_tokens=sum(u.completion_tokens for u in usages),
        cached_tokens=usages[0].cached_tokens,
    )


async def _one(
    generation: Generation, accepted: ReplyEvent, is_disconnected: Callable[[], Awaitable[bool]]
) -> tuple[Choice, Usage] | None:
    fold = Fold()
    fold.add(accepted)
    async for batch in generation.events(is_disconnected):
        for event in batch:
            if event.kind is ReplyKind.ERROR:
                raise error_of(event)
            fold.add(event)
            if event.kind is ReplyKind.DONE:
                return fold.choice(event)
    return None


async def collect(
    generations: Sequence[Generation],
    accepted: Sequence[ReplyEvent],
    fmt: ResponseFormat,
    is_disconnected: Callable[[], Awaitable[bool]],
) -> tuple[Json | None, Usage | None]:
    """The response object and its usage; ``(None, None)`` if the client left before the end."""
    if len(generations) == 1:
        results = [await _one(generations[0], accepted[0], is_disconnected)]
    else:
        results = [None] * len(generations)

        async def run(i: int) -> None:
            results[i] = await _one(generations[i], accepted[i], is_disconnected)

        try:
            async with anyio.create_task_group() as tg:
                for i in range(len(generations)):
                    tg.start_soon(run, i)
        except BaseExceptionGroup as group:  # one choice failed: the request answers with its error
            raise group.exceptions[0] from None
    if any(r is None for r in results):
        return None, None
    choices = [r[0] for r in results if r is not None]
    usage = total_usage([r[1] for r in results if r is not None])
    return fmt.response(choices, usage), usage
