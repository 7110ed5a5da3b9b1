"""Reply events of one engine step for all requests, written to Redis in one round trip: one script
call on one Redis, however many requests ran (a second round trip acks the requests that finished)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from shared import keys
from shared.messages import ReplyEvent
from shared.redis_client import LuaScript, execute_loading

_WRITE = LuaScript((Path(__file__).parent / "reply_write.lua").read_text())
# Requests per script call: bounds the arguments one call unpacks.
_GROUP_SIZE = 256


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
        request; one call for the whole step), then XACK and XDEL the finished requests' messages;
        returns the fenced req_ids.
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
        groups = _slot_groups(redis, list(by_request))

        def build(pipe: Any) -> None:
            for req_id, why in self.poisoned:
                pipe.set(keys.poison_key(req_id), why, ex=keys.POISON_TTL_S)
            for group in groups:
                script_keys: list[str] = []
                args: list[Any] = [worker_id]
                for req_id in group:
                    is_final = req_id in finished
                    events = by_request[req_id]
                    script_keys += [keys.reply_stream(req_id), keys.owner_key(req_id)]
                    args += [keep_s if is_final else keys.REPLY_TTL_S, "1" if is_final else "0", len(events)]
                    args += events
                _WRITE.queue(pipe, script_keys, args)

        # A new or restarted Redis loads the script and runs the (idempotent) batch again.
        results = await execute_loading(redis, build, [_WRITE])
        written = [ok for group_result in results[len(self.poisoned):] for ok in group_result]
        ordered = [req_id for group in groups for req_id in group]
        fenced = {req_id for req_id, ok in zip(ordered, written, strict=True) if not ok}
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


def _slot_groups(redis: Redis, req_ids: list[str]) -> list[list[str]]:
    """The requests one script call writes: on one Redis, all of them (in calls of ``_GROUP_SIZE``);
    on a cluster each request alone, since its keys share a slot of their own (``{req_id}``)."""
    if isinstance(redis, RedisCluster):
        return [[req_id] for req_id in req_ids]
    return [req_ids[i : i + _GROUP_SIZE] for i in range(0, len(req_ids), _GROUP_SIZE)]
