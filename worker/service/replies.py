"""Reply events of one engine step for all requests, written to Redis in one pipelined round trip
(a second one acks the requests that finished)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from shared import keys
from shared.messages import ReplyEvent
from shared.redis_client import LuaScript, execute_loading

_WRITE = LuaScript((Path(__file__).parent / "reply_write.lua").read_text())


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
    # (req_id, counters hash, tenant, amount): a finished internal request's share, settled with its ack
    settlements: list[tuple[str, str, str, float]] = field(default_factory=list)

    def poison(self, req_id: str, why: str) -> None:
        """Mark ``req_id`` poison in Redis, so no worker that reclaims it runs it again."""
        self.poisoned.append((req_id, why))

    def add(self, req_id: str, event: ReplyEvent) -> None:
        self.events.append((req_id, event))

    def finish(self, req_id: str | None, message: HeldMessage) -> None:
        """Ack ``message`` once the events before are written; ``None`` for a message without a reply."""
        self.finals.append((req_id, message))

    def settle(self, req_id: str, counters: str, tenant: str, amount: float) -> None:
        """Add ``amount`` to the tenant's virtual counter once ``req_id``'s reply is written."""
        self.settlements.append((req_id, counters, tenant, amount))

    def __bool__(self) -> bool:
        return bool(self.events or self.finals)

    async def write(self, redis: Redis, worker_id: str, keep_s: int = keys.REPLY_DONE_TTL_S) -> set[str]:
        """Append every request's events (``reply_write.lua``: only where ``worker_id`` still owns the
        request), then XACK and XDEL the finished requests' messages; returns the fenced req_ids.
        A finished reply stream is kept ``keep_s`` more.

        Acks go after their final events, so a message is never acked before its reply is complete,
        and never by a worker that lost the request; the acked message is deleted so request streams
        hold only queued and in-flight work.
        """
        if not self:
            return set()
        by_request: dict[str, list[str]] = {}
        for req_id, event in self.events:
            by_request.setdefault(req_id, []).append(event.model_dump_json())
        finished = {req_id for req_id, _ in self.finals if req_id is not None}
        for req_id in finished:
            by_request.setdefault(req_id, [])  # renews the owner and shortens the stream's life
        def build(pipe: Any) -> None:
            for req_id, why in self.poisoned:
                pipe.set(keys.poison_key(req_id), why, ex=keys.POISON_TTL_S)
            for req_id, events in by_request.items():
                ttl = keep_s if req_id in finished else keys.REPLY_TTL_S
                is_final = "1" if req_id in finished else "0"
                owner = [keys.reply_stream(req_id), keys.owner_key(req_id)]
                _WRITE.queue(pipe, owner, [worker_id, ttl, is_final, *events])

        # A new or restarted Redis loads the script and runs the (idempotent) batch again.
        results = await execute_loading(redis, build, [_WRITE])
        written = results[len(self.poisoned):]
        fenced = {req_id for req_id, ok in zip(by_request, written, strict=True) if not ok}
        acks = [message for req_id, message in self.finals if req_id not in fenced]
        settled = [s for s in self.settlements if s[0] not in fenced and s[3]]
        if acks or settled:
            pipe = redis.pipeline(transaction=False)
            for message in acks:
                pipe.xack(message.stream, keys.WORKER_GROUP, message.msg_id)
                pipe.xdel(message.stream, message.msg_id)
            for _, counters, tenant, amount in settled:
                pipe.hincrbyfloat(counters, tenant, amount)
            await pipe.execute()
        return fenced
