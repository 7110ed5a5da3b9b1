"""Writing reply batches to Redis, only for requests this worker still owns.

A worker that was paused (SIGSTOP, a long GC, a VM freeze) or cut off from Redis may find that
another worker took its requests over meanwhile. Every write checks the request's owner key
atomically (``reply_write.lua``), so its stale writes are refused; the worker then forgets and aborts
those requests. The heartbeat's ``refresh`` finds the same from the request messages' side. A Redis
outage is ridden out with the retry policy; a batch that still cannot be written hands its requests
back, to be resumed from what reached Redis.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared import keys
from shared.retry import REDIS_ERRORS, RetryPolicy
from worker.service import intake
from worker.service.replies import ReplyBatch
from worker.service.tracker import RequestTracker

log = logging.getLogger(__name__)


class ReplyWriter:
    def __init__(
        self,
        redis: Redis,
        worker_id: str,
        tracker: RequestTracker,
        abort: Callable[[str], None],
        policy: RetryPolicy,
        keep_s: int = keys.REPLY_DONE_TTL_S,
    ) -> None:
        self._redis = redis
        self._keep_s = keep_s  # how long a finished reply stays readable (resumed streams replay it)
        self._worker_id = worker_id
        self._tracker = tracker
        self._abort = abort  # tells the engine to drop a request
        self._policy = policy

    async def write(self, batch: ReplyBatch) -> None:
        """Write ``batch``, riding out a Redis outage up to the policy's deadline; after that its
        requests are handed back (left pending), so a worker resumes them from what did reach Redis.
        Requests another worker took over meanwhile are forgotten and aborted."""

        async def attempt() -> set[str]:
            return await batch.write(self._redis, self._worker_id, self._keep_s)

        try:
            fenced = await self._policy.run(attempt, "reply write")
        except ResponseError as exc:  # the pipeline ran; one command failed (e.g. its stream is gone)
            log.error("reply write: %s", exc)
            return
        except REDIS_ERRORS as exc:
            self._drop(self._tracker.hand_back({req_id for req_id, _ in batch.events}))
            log.error("dropped %d reply events (%s); their requests are left for reclaim",
                      len(batch.events), exc)
            return
        if fenced:
            self._drop(self._tracker.hand_back(fenced))
            log.warning("%d requests were taken over by other workers; not writing for them", len(fenced))

    async def refresh(self) -> None:
        """Renew our hold on every held message; forget and abort the requests another worker reclaimed."""
        lost = set(await intake.refresh(self._redis, self._worker_id, self._tracker.held_messages()))
        if lost:
            self._drop(self._tracker.forget(lost))
            log.warning("%d requests were reclaimed by other workers; no longer writing for them", len(lost))

    def _drop(self, req_ids: list[str]) -> None:
        """The engine drops these requests, which the tracker no longer holds."""
        for req_id in req_ids:
            self._abort(req_id)
