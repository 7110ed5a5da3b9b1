"""Whether anybody still reads a request's reply: work for a client that is gone is aborted.

A client that leaves a live gateway is handled by its cancel. This covers what a cancel cannot: a
gateway that died (its liveness key expired: every request it served is aborted within about
``GATEWAY_TTL_S`` plus one heartbeat), and a gateway that gave up on a request while Redis was out of
reach (the request's lease is gone: checked before a request runs and once after an outage).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from redis.asyncio import Redis

from shared import keys
from shared.messages import ErrorInfo
from worker.service.tracker import ActiveRequest

log = logging.getLogger(__name__)

RECHECK_S = 0.2


def abandoned() -> ErrorInfo:
    return ErrorInfo(
        status=503,
        message="the gateway stopped waiting for this request before it could run; send it again",
        type="server_error",
        code="request_abandoned",
    )


async def has_lease(redis: Redis, req_id: str) -> bool:
    return bool(await redis.exists(keys.request_lease(req_id)))


class ReaderWatch:
    """Run once per heartbeat: cancels the active requests whose reader is gone."""

    def __init__(
        self,
        redis: Redis,
        cancel: Callable[[str], None],
        outage_grace_s: float = keys.OUTAGE_GRACE_S,
        cluster: bool = False,
    ) -> None:
        self._redis = redis
        self._cluster = cluster  # a gateway keeps a twin liveness key there (``keys.gateway_keys``)
        self._cancel = cancel
        self._outage_grace_s = outage_grace_s
        self._reachable_since = -math.inf  # no grace at start: no outage yet
        self._check_leases = False

    def redis_failed(self) -> None:
        """Redis could not be reached: gateways' keys may lapse meanwhile, and leases may be dropped."""
        self._reachable_since = float("inf")
        self._check_leases = True

    async def check(self, active: Iterable[ActiveRequest]) -> None:
        now = time.monotonic()
        if self._reachable_since == float("inf"):
            self._reachable_since = now
        # Just back from an outage: gateways renew their keys once their clients find Redis again.
        if now - self._reachable_since < self._outage_grace_s:
            return
        watched = [r for r in active if r.gateway_id is not None and not r.is_cancelled]
        if not watched:
            self._check_leases = False
            return
        gateways = sorted({r.gateway_id for r in watched if r.gateway_id is not None})
        pipe = self._redis.pipeline(transaction=False)
        self._queue_liveness(pipe, gateways)
        check_leases = self._check_leases
        if check_leases:
            for r in watched:
                pipe.exists(keys.request_lease(r.req_id))
        found: list[Any] = await pipe.execute()
        alive = self._alive(gateways, found)
        gone = await self._still_gone([g for g in gateways if g not in alive])
        leases = found[len(found) - len(watched):] if check_leases else [1] * len(watched)
        self._check_leases = False
        adopted = await self._adopted([r for r in watched if r.gateway_id in gone])
        orphans: list[str] = []
        for r, has_lease in zip(watched, leases, strict=True):
            if r.req_id in adopted:
                r.gateway_id = adopted[r.req_id]
            elif r.gateway_id in gone or not has_lease:
                orphans.append(r.req_id)
        for req_id in orphans:
            self._cancel(req_id)
        if orphans:
            log.warning("aborted %d requests nobody reads (gateways gone: %s)", len(orphans), sorted(gone))

    async def _still_gone(self, gateways: list[str]) -> set[str]:
        """Of gateways whose key was missing, those still missing a moment later: a cluster primary
        that was stalled long enough to be replaced answers from its stale data once before it learns."""
        if not gateways:
            return set()
        await asyncio.sleep(RECHECK_S)
        pipe = self._redis.pipeline(transaction=False)
        self._queue_liveness(pipe, gateways)
        alive = self._alive(gateways, await pipe.execute())
        return {g for g in gateways if g not in alive}

    def _queue_liveness(self, pipe: Any, gateways: list[str]) -> None:
        """One EXISTS per liveness key of each gateway (a cluster's twins lie in another slot)."""
        for gateway_id in gateways:
            for key in keys.gateway_keys(gateway_id, self._cluster):
                pipe.exists(key)

    def _alive(self, gateways: list[str], found: list[Any]) -> set[str]:
        """The gateways with any liveness key among ``found`` (answers in ``_queue_liveness``'s order)."""
        per = len(keys.gateway_keys("", self._cluster))
        return {g for i, g in enumerate(gateways) if any(found[i * per:(i + 1) * per])}

    async def _adopted(self, requests: list[ActiveRequest]) -> dict[str, str]:
        """Of requests whose gateway is gone, those another live gateway now serves (a client resumed
        its stream there: that gateway holds the request's lease), with that gateway's id."""
        if not requests:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for r in requests:
            pipe.get(keys.request_lease(r.req_id))
        holders: list[Any] = await pipe.execute()
        names = sorted({h for r, h in zip(requests, holders, strict=True) if h and h != r.gateway_id})
        if not names:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        self._queue_liveness(pipe, names)
        alive = self._alive(names, await pipe.execute())
        return {r.req_id: h for r, h in zip(requests, holders, strict=True) if h in alive}
