"""SSE event ids: where a client stands in a stream, so that it can resume it on any gateway replica.

An id is ``<completion id>.<seq>[.<seq>...][.u]``: for each choice, the seq of the last reply event
the client was sent (``shared/messages.py``: seqs count from 0 without gaps), and ``u`` once the usage
chunk was sent. Given back as ``Last-Event-ID``, it says exactly which events to send again: none
the client has, and every one it lacks.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.errors import OpenAIError

_USAGE = "u"


@dataclass(frozen=True)
class StreamCursor:
    completion_id: str
    seqs: tuple[int, ...]  # per choice: the last reply event sent
    usage_sent: bool = False

    @classmethod
    def parse(cls, value: str) -> StreamCursor:
        """A ``Last-Event-ID``; 400 when it is not one this gateway wrote."""
        completion_id, *parts = value.strip().split(".")
        usage_sent = bool(parts) and parts[-1] == _USAGE
        if usage_sent:
            parts.pop()
        if not completion_id or not parts or not all(p.isdigit() for p in parts):
            raise OpenAIError(
                400, f"Last-Event-ID {value[:80]!r} is not an event id of a busstop stream",
                param="Last-Event-ID", code="invalid_value",
            )  # fmt: skip
        return cls(completion_id, tuple(int(p) for p in parts), usage_sent)


def event_id(completion_id: str, seqs: list[int], usage_sent: bool = False) -> bytes:
    """The id of the event that brings the client to ``seqs`` (and, with ``usage_sent``, the usage)."""
    tail = "." + _USAGE if usage_sent else ""
    return f"{completion_id}.{'.'.join(map(str, seqs))}{tail}".encode()
