"""Writing reply batches to Redis, only for requests this worker still holds.

A worker that was paused (SIGSTOP, a long GC, a VM freeze) or cut off from Redis may find that
another worker reclaimed its messages meanwhile. Its writes for them would be stale, so before writing
after such a gap it asks Redis which messages it still holds (``refresh.lua``, atomic), forgets and
aborts the others, and writes only the rest. A Redis outage is ridden out with the retry policy; a
batch that still cannot be written hands its requests back, to be resumed from what reached Redis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared.retry import REDIS_ERRORS, RetryPolicy
from worker.service import intake
from worker.service.replies import HeldMessage, ReplyBatch
from worker.service.tracker import RequestTracker

log = logging.getLogger(__name__)


class ReplyWriter:
    def __init__(
        self,
        redis: Redis,
        worker_id: str,
        tracker: RequestTracker,
        abort: Callable[[str], None],
        reclaim_min_idle_ms: int,
        policy: RetryPolicy,
    ) -> None:
        self._redis = redis
        self._worker_id = worker_id
        self._tracker = tracker
        self._abort = abort  # tells the engine to drop a request
        # Messages refreshed at time t cannot be reclaimed before t + reclaim_min_idle; half of it
        # leaves a margin for the clocks of Redis and of this process.
        self._safe_s = reclaim_min_idle_ms / 2000
        self._policy = policy
        self._confirmed_at = time.monotonic()  # when Redis last confirmed which messages we hold

    async def write(self, batch: ReplyBatch) -> None:
        """Write ``batch``, riding out a Redis outage up to the policy's deadline; after that its
        requests are handed back (left pending), so a worker resumes them from what did reach Redis.
        Every attempt first drops what another worker may have taken over meanwhile."""

        async def attempt() -> None:
            await (await self._without_lost(batch)).write(self._redis)

        try:
            await self._policy.run(attempt, "reply write")
        except ResponseError as exc:  # the pipeline ran; one command failed (e.g. its stream is gone)
            log.error("reply write: %s", exc)
        except REDIS_ERRORS as exc:
            req_ids = {req_id for req_id, _ in batch.events}
            for req_id in self._tracker.hand_back(req_ids):
                self._abort(req_id)
            log.error("dropped %d reply events (%s); their requests are left for reclaim",
                      len(batch.events), exc)

    async def refresh(self, finals: list[tuple[str | None, HeldMessage]] | None = None) -> set[str]:
        """Renew our hold on every held message (and those of ``finals``, requests that just finished);
        forget and abort the requests another worker reclaimed, and return their ids."""
        started = time.monotonic()
        finals = finals or []
        held = self._tracker.held_messages() + [message for _, message in finals]
        lost = set(await intake.refresh(self._redis, self._worker_id, held))
        self._confirmed_at = started
        if not lost:
            return set()
        req_ids = set(self._tracker.forget(lost))
        for req_id in req_ids:
            self._abort(req_id)
        req_ids.update(req_id for req_id, message in finals if req_id is not None and message in lost)
        log.warning("%d requests were reclaimed by other workers; no longer writing for them", len(lost))
        return req_ids

    async def _without_lost(self, batch: ReplyBatch) -> ReplyBatch:
        """``batch`` less the requests another worker may have reclaimed since Redis last confirmed
        ours; costs a round trip only after a gap longer than ``_safe_s``."""
        if time.monotonic() - self._confirmed_at < self._safe_s or not batch:
            return batch
        return batch.without(await self.refresh(batch.finals))
