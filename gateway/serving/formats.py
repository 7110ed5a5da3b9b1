"""How reply events become chat or legacy-completion objects: the only part of the two endpoints
that differs. ``stream`` and ``collect`` drive either format."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from gateway.protocol import responses as r
from shared.messages import TokenLogprob, Usage


class ResponseFormat(Protocol):
    chunk_object: str

    def first_chunk(self) -> r.Json | None: ...
    def delta_chunk(
        self, text: str, logprobs: list[TokenLogprob] | None, finish_reason: str | None
    ) -> r.Json: ...
    def usage_chunk(self, usage: Usage) -> r.Json: ...
    def response(
        self, text: str, finish_reason: str | None, usage: Usage, logprobs: list[TokenLogprob] | None
    ) -> r.Json: ...


@dataclass
class ChatFormat:
    id: str
    created: int
    model: str
    include_usage: bool = False
    chunk_object: str = "chat.completion.chunk"

    def first_chunk(self) -> r.Json:
        """OpenAI's first chunk: the role, with empty content."""
        return self._with_usage(
            r.chat_chunk(self.id, self.created, self.model, {"role": "assistant", "content": ""})
        )

    def delta_chunk(
        self, text: str, logprobs: list[TokenLogprob] | None, finish_reason: str | None
    ) -> r.Json:
        delta = {"content": text} if text or finish_reason is None else {}
        lp = r.chat_logprobs_json(logprobs) if logprobs is not None else None
        return self._with_usage(
            r.chat_chunk(self.id, self.created, self.model, delta, logprobs=lp, finish_reason=finish_reason)
        )

    def usage_chunk(self, usage: Usage) -> r.Json:
        return r.usage_chunk(self.id, self.created, self.model, self.chunk_object, usage)

    def response(
        self, text: str, finish_reason: str | None, usage: Usage, logprobs: list[TokenLogprob] | None
    ) -> r.Json:
        lp = r.chat_logprobs_json(logprobs) if logprobs is not None else None
        return r.chat_completion(self.id, self.created, self.model, text, finish_reason, usage, lp)

    def _with_usage(self, chunk: r.Json) -> r.Json:
        if self.include_usage:  # with include_usage, OpenAI sends "usage": null on every other chunk
            chunk["usage"] = None
        return chunk


@dataclass
class CompletionFormat:
    id: str
    created: int
    model: str
    include_usage: bool = False
    chunk_object: str = "text_completion"
    _text_offset: int = field(default=0, repr=False)

    def first_chunk(self) -> None:
        return None

    def delta_chunk(
        self, text: str, logprobs: list[TokenLogprob] | None, finish_reason: str | None
    ) -> r.Json:
        lp = r.completion_logprobs_json(logprobs, self._text_offset) if logprobs is not None else None
        self._text_offset += len(text)
        chunk = r.completion_chunk(
            self.id, self.created, self.model, text, logprobs=lp, finish_reason=finish_reason
        )
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def usage_chunk(self, usage: Usage) -> r.Json:
        return r.usage_chunk(self.id, self.created, self.model, self.chunk_object, usage)

    def response(
        self, text: str, finish_reason: str | None, usage: Usage, logprobs: list[TokenLogprob] | None
    ) -> r.Json:
        lp = r.completion_logprobs_json(logprobs, 0) if logprobs is not None else None
        return r.completion(self.id, self.created, self.model, text, finish_reason, usage, lp)
