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
    """``next_seq`` continues the reply stream; ``output_token_ids`` and ``text`` were already sent to
    the client (the text may end short of the tokens: the rest of a character, or a held stop string)."""

    next_seq: int = 0
    output_token_ids: list[int] = field(default_factory=list)
    text: str = ""
    is_finished: bool = False  # a DONE or ERROR is already there: only the ack was missing
    poisoned: str | None = None  # why the request failed a step on its own, if it did: never run it again


async def take_over(redis: Redis, req_id: str, worker_id: str) -> ResumeState:
    """Become the request's owner, then read back its reply stream and poison mark (one round trip).

    Owner first: from then on the previous worker's writes are refused (``reply_write.lua``), so the
    stream read afterwards is all the client will ever get from it. Events are read as the gateway
    reads them, the first of each ``seq`` counting.
    """
    pipe = redis.pipeline(transaction=False)
    pipe.set(keys.owner_key(req_id), worker_id, ex=keys.REPLY_TTL_S)
    pipe.xrange(keys.reply_stream(req_id))
    pipe.get(keys.poison_key(req_id))
    _, entries, poisoned = await pipe.execute()
    next_seq = 0
    output_token_ids: list[int] = []
    texts: list[str] = []
    is_finished = False
    for entry_id, fields in entries:
        try:
            event = decode(ReplyEvent, fields)
        except MessageError as exc:
            log.warning("reply %s: skipping entry %s: %s", req_id, entry_id, exc)
            continue
        if event.seq < next_seq:
            continue
        next_seq = event.seq + 1
        if event.kind is ReplyKind.DELTA:
            output_token_ids.extend(event.token_ids)
            texts.append(event.text)
        elif event.kind is not ReplyKind.ACCEPTED:
            is_finished = True
    return ResumeState(next_seq, output_token_ids, "".join(texts), is_finished, poisoned)
