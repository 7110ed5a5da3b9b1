"""Reply events of one engine step for all requests, written to Redis in one pipelined round trip."""

from __future__ import annotations

from dataclasses import dataclass, field

from redis.asyncio import Redis

from shared import keys
from shared.messages import DATA_FIELD, ReplyEvent


@dataclass(frozen=True)
class HeldMessage:
    """A request message this worker holds (pending in the group under its name) until it acks it."""

    stream: str
    msg_id: str


@dataclass
class ReplyBatch:
    """Events and acks collected while handling one engine report; ``write`` sends them all at once."""

    events: list[tuple[str, ReplyEvent]] = field(default_factory=list)  # (req_id, event)
    finals: list[tuple[str | None, HeldMessage]] = field(default_factory=list)  # replies complete: ack these
    poisoned: list[tuple[str, str]] = field(default_factory=list)  # (req_id, why): never run again

    def poison(self, req_id: str, why: str) -> None:
        """Mark ``req_id`` poison in Redis, so no worker that reclaims it runs it again."""
        self.poisoned.append((req_id, why))

    def add(self, req_id: str, event: ReplyEvent) -> None:
        self.events.append((req_id, event))

    def finish(self, req_id: str | None, message: HeldMessage) -> None:
        """Ack ``message`` once the events before are written; ``None`` for a message without a reply."""
        self.finals.append((req_id, message))

    def without(self, req_ids: set[str]) -> ReplyBatch:
        """This batch less everything for ``req_ids``."""
        if not req_ids:
            return self
        return ReplyBatch(
            [(r, e) for r, e in self.events if r not in req_ids],
            [(r, m) for r, m in self.finals if r not in req_ids],
            [(r, why) for r, why in self.poisoned if r not in req_ids],
        )

    def __bool__(self) -> bool:
        return bool(self.events or self.finals)

    async def write(self, redis: Redis) -> None:
        """XADD every event, keep reply streams alive, then XACK and XDEL the finished requests' messages.

        Acks go after their final events in the same pipeline, so a message is never acked before
        its reply is complete; the acked message is deleted so request streams hold only queued and
        in-flight work.
        """
        if not self:
            return
        pipe = redis.pipeline(transaction=False)
        for req_id, why in self.poisoned:
            pipe.set(keys.poison_key(req_id), why, ex=keys.POISON_TTL_S)
        touched: set[str] = set()
        for req_id, event in self.events:
            stream = keys.reply_stream(req_id)
            pipe.xadd(stream, {DATA_FIELD: event.model_dump_json()})
            touched.add(stream)
        finished = {keys.reply_stream(req_id) for req_id, _ in self.finals if req_id is not None}
        for stream in touched - finished:
            pipe.expire(stream, keys.REPLY_TTL_S)
        for stream in finished:
            pipe.expire(stream, keys.REPLY_DONE_TTL_S)
        for _req_id, message in self.finals:
            pipe.xack(message.stream, keys.WORKER_GROUP, message.msg_id)
            pipe.xdel(message.stream, message.msg_id)
        await pipe.execute()
