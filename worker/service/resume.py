"""Where a reclaimed request stands: read back what its dead worker already wrote to the reply stream."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from redis.asyncio import Redis

from shared import keys
from shared.messages import MessageError, ReplyEvent, ReplyKind, decode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResumeState:
    """``next_seq`` continues the reply stream; ``output_token_ids`` were already sent to the client."""

    next_seq: int = 0
    output_token_ids: list[int] = field(default_factory=list)
    is_finished: bool = False  # a DONE or ERROR is already there: only the ack was missing
    poisoned: str | None = None  # why the request failed a step on its own, if it did: never run it again


async def read_resume_state(redis: Redis, req_id: str) -> ResumeState:
    """The reply stream so far and the request's poison mark, in one round trip."""
    pipe = redis.pipeline(transaction=False)
    pipe.xrange(keys.reply_stream(req_id))
    pipe.get(keys.poison_key(req_id))
    entries, poisoned = await pipe.execute()
    next_seq = 0
    output_token_ids: list[int] = []
    is_finished = False
    for entry_id, fields in entries:
        try:
            event = decode(ReplyEvent, fields)
        except MessageError as exc:
            log.warning("reply %s: skipping entry %s: %s", req_id, entry_id, exc)
            continue
        next_seq = max(next_seq, event.seq + 1)
        if event.kind is ReplyKind.DELTA:
            output_token_ids.extend(event.token_ids)
        elif event.kind is not ReplyKind.ACCEPTED:
            is_finished = True
    return ResumeState(next_seq, output_token_ids, is_finished, poisoned)
