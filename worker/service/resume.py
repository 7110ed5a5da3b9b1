"""Where a reclaimed request stands: read back what its dead worker already wrote to the reply stream."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from shared import keys
from shared.messages import DATA_FIELD, ReplyEvent, ReplyKind


@dataclass(frozen=True)
class ResumeState:
    """``next_seq`` continues the reply stream; ``output_token_ids`` were already sent to the client."""

    next_seq: int = 0
    output_token_ids: list[int] = field(default_factory=list)
    is_finished: bool = False  # a DONE or ERROR is already there: only the ack was missing
    was_accepted: bool = False


async def read_resume_state(redis: Redis, req_id: str) -> ResumeState:
    entries: Any = await redis.xrange(keys.reply_stream(req_id))
    next_seq = 0
    output_token_ids: list[int] = []
    is_finished = was_accepted = False
    for _entry_id, fields in entries:
        event = ReplyEvent.model_validate_json(fields[DATA_FIELD])
        next_seq = max(next_seq, event.seq + 1)
        if event.kind is ReplyKind.DELTA:
            output_token_ids.extend(event.token_ids)
        elif event.kind is ReplyKind.ACCEPTED:
            was_accepted = True
        else:
            is_finished = True
    return ResumeState(next_seq, output_token_ids, is_finished, was_accepted)
