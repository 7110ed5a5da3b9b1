"""Batch state in Redis: the batch objects, their per-line progress, and the leases of runners.

Every change that must happen once is one atomic step in Redis:
- a status change is a compare-and-set on the status (``_TRANSITION``), so cancel and finalize never
  both win, and a batch is finalized once;
- a line is submitted only by whoever first marks it submitted (HSETNX, then XADD), so a resumed or
  duplicate runner does not put a line on the request stream twice (but see ``submit``);
- a line's result is recorded, and counted, only once (``_RECORD``: HSETNX, then HINCRBY).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from gateway.batch.models import (
    ACTIVE_STATUSES,
    Batch,
    BatchErrors,
    BatchStatus,
    batch_from_fields,
    batch_to_fields,
)
from shared import keys

# KEYS[1] batch hash. ARGV[1] allowed current statuses "a,b", ARGV[2] new status, ARGV[3..] field/value pairs.
_TRANSITION = """
local cur = redis.call("HGET", KEYS[1], "status")
if not cur then return 0 end
for s in string.gmatch(ARGV[1], "[^,]+") do
  if s == cur then
    redis.call("HSET", KEYS[1], "status", ARGV[2], unpack(ARGV, 3))
    return 1
  end
end
return 0
"""


# KEYS[1] results or errors hash, KEYS[2] batch hash. ARGV[1] line index, ARGV[2] line, ARGV[3] counter field.
_RECORD = """
if redis.call("HSETNX", KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call("HINCRBY", KEYS[2], ARGV[3], 1)
return 1
"""

# KEYS[1] lease. ARGV[1] owner token, ARGV[2] ms. Extends the lease only if the caller still owns it.
_RENEW = """
if redis.call("GET", KEYS[1]) ~= ARGV[1] then return 0 end
redis.call("PEXPIRE", KEYS[1], ARGV[2])
return 1
"""

_RELEASE = """
if redis.call("GET", KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call("DEL", KEYS[1])
"""


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _strs(data: dict[Any, Any]) -> dict[str, str]:
    return {_str(k): _str(v) for k, v in data.items()}


class BatchStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._transition = redis.register_script(_TRANSITION)
        self._record = redis.register_script(_RECORD)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    # --- batch objects -------------------------------------------------------------------------------

    async def create(self, batch: Batch, tenant: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.batch_key(batch.id), mapping=batch_to_fields(batch, tenant))  # type: ignore[arg-type]
            pipe.zadd(keys.batches_index(tenant), {batch.id: time.time()})
            pipe.sadd(keys.BATCHES_ACTIVE, batch.id)
            await pipe.execute()

    async def get(self, batch_id: str, tenant: str | None = None) -> Batch | None:
        """The batch, or ``None`` if it does not exist or belongs to another tenant than ``tenant``."""
        data = _strs(await self._redis.hgetall(keys.batch_key(batch_id)))
        if not data or (tenant is not None and data.get("tenant") != tenant):
            return None
        return batch_from_fields(data)

    async def list_batches(self, tenant: str, after: str | None, limit: int) -> tuple[list[Batch], bool]:
        """A tenant's batches, newest first, starting after the batch ``after``; and whether more follow."""
        index = keys.batches_index(tenant)
        start = 0
        if after is not None:
            rank = await self._redis.zrevrank(index, after)
            start = 0 if rank is None else int(rank) + 1  # type: ignore[arg-type]
        ids = [_str(i) for i in await self._redis.zrevrange(index, start, start + limit)]  # type: ignore[arg-type]
        batches = [b for b in [await self.get(i, tenant) for i in ids[:limit]] if b is not None]
        return batches, len(ids) > limit

    async def transition(
        self, batch_id: str, allowed: tuple[BatchStatus, ...], status: BatchStatus, **fields: Any
    ) -> bool:
        """Move to ``status`` (stamping ``<status>_at``) if the batch is in one of ``allowed``."""
        fields.setdefault(f"{status.value}_at", int(time.time()))
        args: list[Any] = [",".join(s.value for s in allowed), status.value]
        for name, value in fields.items():
            if isinstance(value, BatchErrors):
                value = value.model_dump_json()
            args += [name, value]
        changed = bool(await self._transition(keys=[keys.batch_key(batch_id)], args=args))
        if changed and status not in ACTIVE_STATUSES:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.srem(keys.BATCHES_ACTIVE, batch_id)
                pipe.expire(keys.batch_key(batch_id), keys.BATCH_TTL_S)
                await pipe.execute()
        return changed

    async def tenant_of(self, batch_id: str) -> str | None:
        raw = await self._redis.hget(keys.batch_key(batch_id), "tenant")
        return None if raw is None else _str(raw)

    async def set_total(self, batch_id: str, total: int) -> None:
        await self._redis.hset(keys.batch_key(batch_id), "total", total)

    async def active_ids(self) -> list[str]:
        return sorted(_str(i) for i in await self._redis.smembers(keys.BATCHES_ACTIVE))

    async def runnable_ids(self) -> list[str]:
        """The active batches a runner may drive now, earliest deadline first. Within a tenant only the
        in-progress batch with the earliest deadline (then the oldest) runs; its later ones wait for it,
        so a tenant's share goes to its most urgent job. Batches being closed always may run."""
        heads: dict[str, tuple[float, int, str]] = {}
        closing: list[tuple[float, int, str]] = []
        for batch_id in await self.active_ids():
            data = _strs(await self._redis.hgetall(keys.batch_key(batch_id)))
            if not data:
                continue
            batch = batch_from_fields(data)
            order = (float(batch.expires_at or math.inf), batch.created_at, batch_id)
            tenant = data.get("tenant", "")
            if batch.status not in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS):
                closing.append(order)
            elif tenant not in heads or order < heads[tenant]:
                heads[tenant] = order
        return [batch_id for *_, batch_id in sorted([*heads.values(), *closing])]

    # --- lines ---------------------------------------------------------------------------------------

    async def submit(
        self, batch_id: str, index: int, req_id: str, enqueue: Callable[[], Awaitable[str]]
    ) -> tuple[str, str]:
        """Put the line's request on its stream (``enqueue``) unless it was; the line's (req_id, request
        message id).

        Three steps, not one script: on a Redis Cluster the line's record and the request stream live
        in different slots. A runner that died between marking the line and adding it left a req_id
        without a message id; the next runner adds it, so in that one case a line may run twice (its
        result is kept once).
        """
        submitted = keys.batch_lines(batch_id, "submitted")
        await self._redis.hsetnx(submitted, str(index), req_id)
        line = await self.submitted_line(batch_id, index)
        assert line is not None  # just marked
        if line[1]:
            return line
        msg_id = await enqueue()
        await self._redis.hset(submitted, str(index), f"{line[0]} {msg_id}")
        return line[0], msg_id

    async def submitted_line(self, batch_id: str, index: int) -> tuple[str, str] | None:
        """(req_id, request message id) of a submitted line."""
        raw = await self._redis.hget(keys.batch_lines(batch_id, "submitted"), str(index))
        if raw is None:
            return None
        req_id, _, msg_id = _str(raw).partition(" ")
        return req_id, msg_id

    async def submitted(self, batch_id: str) -> dict[int, tuple[str, str]]:
        """Line index -> (req_id, request message id) of every line already submitted."""
        raw = _strs(await self._redis.hgetall(keys.batch_lines(batch_id, "submitted")))
        out: dict[int, tuple[str, str]] = {}
        for k, v in raw.items():
            req_id, _, msg_id = v.partition(" ")
            out[int(k)] = (req_id, msg_id)
        return out

    async def record(self, batch_id: str, index: int, line: str, is_ok: bool) -> bool:
        """Keep a line's output (``is_ok``) or error line once, counting it; ``False`` if already kept."""
        kind, counter = ("results", "completed") if is_ok else ("errors", "failed")
        args: list[str | int] = [index, line, counter]
        return bool(
            await self._record(keys=[keys.batch_lines(batch_id, kind), keys.batch_key(batch_id)], args=args)
        )

    async def finished_lines(self, batch_id: str) -> set[int]:
        out: set[int] = set()
        for kind in ("results", "errors"):
            out.update(int(k) for k in await self._redis.hkeys(keys.batch_lines(batch_id, kind)))
        return out

    async def lines(self, batch_id: str, kind: str) -> list[str]:
        """The kept ``results`` or ``errors`` lines, in input order."""
        raw = _strs(await self._redis.hgetall(keys.batch_lines(batch_id, kind)))
        return [v for _, v in sorted((int(k), v) for k, v in raw.items())]

    async def drop_lines(self, batch_id: str) -> None:
        await self._redis.delete(*(keys.batch_lines(batch_id, k) for k in ("submitted", "results", "errors")))

    # --- leases --------------------------------------------------------------------------------------

    async def acquire_lease(self, batch_id: str, lease_s: float) -> str | None:
        """A token proving this caller drives the batch for ``lease_s``, or ``None`` if someone else does."""
        token = uuid.uuid4().hex
        ok = await self._redis.set(keys.batch_lease(batch_id), token, nx=True, px=int(lease_s * 1000))
        return token if ok else None

    async def renew_lease(self, batch_id: str, token: str, lease_s: float) -> bool:
        return bool(await self._renew(keys=[keys.batch_lease(batch_id)], args=[token, int(lease_s * 1000)]))

    async def release_lease(self, batch_id: str, token: str) -> None:
        await self._release(keys=[keys.batch_lease(batch_id)], args=[token])


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


def errors_of(code: str, message: str) -> BatchErrors:
    return BatchErrors.model_validate({"data": [{"code": code, "message": message}]})
