"""Which workers are alive, from their heartbeat keys (``shared.keys.worker_key``, with a TTL).

Finding them takes a SCAN over the keyspace, so the result is cached for ``refresh_s`` and shared
by all requests: a request's liveness check is a dictionary lookup, not a Redis round trip.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from redis.asyncio import Redis

from shared import keys
from shared.messages import DATA_FIELD, MessageError, TrafficClass, WorkerHeartbeat, decode

logger = logging.getLogger(__name__)

WAIT_POLL_S = 0.1


@dataclass(frozen=True)
class LiveWorkers:
    """One reading of the heartbeat keys: each served model's live workers."""

    by_model: dict[str, list[WorkerHeartbeat]] = field(default_factory=dict)
    fetched_at: float = float("-inf")  # time.monotonic()

    def has_model(self, model: str) -> bool:
        return bool(self.by_model.get(model))

    def max_model_len(self, model: str) -> int | None:
        workers = self.by_model.get(model)
        return min(w.max_model_len for w in workers) if workers else None

    def max_token_bytes(self, model: str) -> int:
        """The most UTF-8 bytes one token of ``model`` covers; 0 when a worker does not say."""
        sizes = [w.max_token_bytes for w in self.by_model.get(model) or []]
        return 0 if not sizes or 0 in sizes else max(sizes)


class WorkerRegistry:
    def __init__(self, redis: Redis, refresh_s: float) -> None:
        self._redis = redis
        self._refresh_s = refresh_s
        self._live = LiveWorkers()
        self._lock = asyncio.Lock()

    async def live(self, max_age_s: float | None = None) -> LiveWorkers:
        """The cached reading, refreshed first when older than ``max_age_s`` (default ``refresh_s``)."""
        max_age_s = self._refresh_s if max_age_s is None else max_age_s
        if time.monotonic() - self._live.fetched_at < max_age_s:
            return self._live
        async with self._lock:  # one refresh at a time; waiters reuse its result
            if time.monotonic() - self._live.fetched_at >= max_age_s:
                self._live = await self._fetch()
        return self._live

    async def _fetch(self) -> LiveWorkers:
        names = [name async for name in self._redis.scan_iter(match=keys.worker_pattern(), count=1000)]
        values = await self._redis.mget(names) if names else []
        by_model: dict[str, list[WorkerHeartbeat]] = {}
        for name, value in zip(names, values, strict=True):
            if value is None:  # expired between SCAN and MGET
                continue
            try:
                beat = decode(WorkerHeartbeat, {DATA_FIELD: value})
            except MessageError as exc:  # not a worker this gateway can count on: skip it
                logger.warning("ignoring heartbeat at %s: %s", name, exc)
                continue
            by_model.setdefault(beat.model, []).append(beat)
        return LiveWorkers(by_model, time.monotonic())

    async def wait_for(self, model: str, timeout_s: float) -> bool:
        """True once ``model`` has a live worker; False if none appears within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            # Fresher readings while waiting: a worker back from an outage is used within WAIT_POLL_S.
            if (await self.live(max_age_s=WAIT_POLL_S)).has_model(model):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(WAIT_POLL_S, remaining))

    async def has_request_streams(self, model: str) -> bool:
        """Whether workers of ``model`` ever registered (their consumer group's streams exist)."""
        names = [keys.request_stream(model, c) for c in TrafficClass]
        return bool(await self._redis.exists(*names))
