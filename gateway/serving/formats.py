"""How reply events become chat or legacy-completion objects: the only part of the two endpoints
that differs. ``stream`` and ``collect`` drive either format, for each of a request's ``n`` choices."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from gateway.protocol import responses as r
from gateway.structured.tool_calls import ToolCallParser
from shared.messages import TokenLogprob, Usage


@dataclass(frozen=True)
class Choice:
    """One finished choice: its whole text, how it ended, its logprobs."""

    text: str
    finish_reason: str | None
    logprobs: list[TokenLogprob] | None = None


class ResponseFormat(Protocol):
    id: str  # the completion's
    created: int
    model: str
    include_usage: bool
    chunk_object: str

    def first_chunk(self, index: int) -> r.Json | None: ...
    def delta_chunk(
        self, index: int, text: str, logprobs: list[TokenLogprob] | None, finish_reason: str | None
    ) -> r.Json | None: ...
    def usage_chunk(self, usage: Usage) -> r.Json: ...
    def response(self, choices: list[Choice], usage: Usage) -> r.Json: ...


@dataclass
class ChatFormat:
    """Chat completions; with ``parses_tool_calls`` the answer's ``<tool_call>`` blocks become
    ``tool_calls`` (finish_reason "tool_calls")."""

    id: str
    created: int
    model: str
    include_usage: bool = False
    parses_tool_calls: bool = False
    chunk_object: str = "chat.completion.chunk"
    _parsers: dict[int, ToolCallParser] = field(default_factory=dict, repr=False)

    def first_chunk(self, index: int) -> r.Json:
        """OpenAI's first chunk: the role, with empty content."""
        delta = {"role": "assistant", "content": ""}
        return self._with_usage(r.chat_chunk(self.id, self.created, self.model, delta, index=index))

    def delta_chunk(
        self, index: int, text: str, logprobs: list[TokenLogprob] | None, finish_reason: str | None
    ) -> r.Json | None:
        delta: r.Json = {}
        if self.parses_tool_calls:
            parser = self._parsers.setdefault(index, ToolCallParser())
            text, calls = parser.feed(text)
            if finish_reason is not None:
                more_text, more_calls = parser.finish()
                text, calls = text + more_text, calls + more_calls
                finish_reason = _tool_finish(finish_reason, bool(parser.calls))
            if calls:
                delta["tool_calls"] = [c.json() for c in calls]
        if text or (finish_reason is None and not delta):
            delta["content"] = text
        if not (delta.get("content") or delta.get("tool_calls") or logprobs or finish_reason):
            return None  # held back: the start of a tool call, or nothing yet
        lp = r.chat_logprobs_json(logprobs) if logprobs is not None else None
        return self._with_usage(r.chat_chunk(
            self.id, self.created, self.model, delta, index=index, logprobs=lp, finish_reason=finish_reason))

    def usage_chunk(self, usage: Usage) -> r.Json:
        return r.usage_chunk(self.id, self.created, self.model, self.chunk_object, usage)

    def response(self, choices: list[Choice], usage: Usage) -> r.Json:
        out = []
        for index, choice in enumerate(choices):
            lp = r.chat_logprobs_json(choice.logprobs) if choice.logprobs is not None else None
            content: str | None = choice.text
            tool_calls = None
            finish_reason = choice.finish_reason
            if self.parses_tool_calls:
                parser = ToolCallParser()
                head, _ = parser.feed(choice.text)
                tail, _ = parser.finish()
                content = head + tail
                if parser.calls and not content.strip():
                    content = None  # OpenAI's message of calls alone
                tool_calls = [c.json() for c in parser.calls]
                finish_reason = _tool_finish(finish_reason, bool(parser.calls))
            out.append(r.chat_choice(index, content, tool_calls, lp, finish_reason))
        return r.chat_completion(self.id, self.created, self.model, out, usage)

    def _with_usage(self, chunk: r.Json) -> r.Json:
        if self.include_usage:  # with include_usage, OpenAI sends "usage": null on every other chunk
            chunk["usage"] = None
        return chunk


def _tool_finish(finish_reason: str | None, has_calls: bool) -> str | None:
    return "tool_calls" if has_calls and finish_reason == "stop" else finish_reason


@dataclass
class CompletionFormat:
    id: str
    created: int
    model: str
    include_usage: bool = False
    chunk_object: str = "text_completion"
    _text_offsets: dict[int, int] = field(default_factory=dict, repr=False)

    def first_chunk(self, index: int) -> None:
        return None

    def delta_chunk(
        self, index: int, text: str, logprobs: list[TokenLogprob] | None, finish_reason: str | None
    ) -> r.Json:
        offset = self._text_offsets.get(index, 0)
        lp = r.completion_logprobs_json(logprobs, offset) if logprobs is not None else None
        self._text_offsets[index] = offset + len(text)
        chunk = r.completion_chunk(
            self.id, self.created, self.model, text, index=index, logprobs=lp, finish_reason=finish_reason
        )
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def usage_chunk(self, usage: Usage) -> r.Json:
        return r.usage_chunk(self.id, self.created, self.model, self.chunk_object, usage)

    def response(self, choices: list[Choice], usage: Usage) -> r.Json:
        out = [
            r.completion_choice(
                i, c.text, r.completion_logprobs_json(c.logprobs, 0) if c.logprobs is not None else None,
                c.finish_reason)
            for i, c in enumerate(choices)
        ]
        return r.completion(self.id, self.created, self.model, out, usage)
