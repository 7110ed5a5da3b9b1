"""Runs batches in the background of every gateway replica, each batch on exactly one replica.

Every ``batch_poll_s`` a replica looks at the batches that may run (``BatchStore.runnable_ids``: a
tenant's earliest deadline first) and takes a lease on those no one holds (up to
``max_running_batches``). It renews each lease every third of its length; if a renewal fails
(the replica stalled and another took over) it stops driving that batch at once. A replica that dies
simply stops renewing: the lease runs out and another replica resumes the batch where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio import Redis

from gateway.batch.config import BatchSettings
from gateway.batch.driver import BatchDriver
from gateway.batch.files import FileStore
from gateway.batch.serving import ServingExecutor
from gateway.batch.store import BatchStore
from shared.retry import TRANSIENT_ERRORS

logger = logging.getLogger(__name__)


class BatchRunner:
    def __init__(
        self,
        redis: Redis,
        store: BatchStore,
        files: FileStore,
        executor: ServingExecutor,
        settings: BatchSettings,
    ) -> None:
        self._redis = redis
        self._store = store
        self._files = files
        self._executor = executor
        self._settings = settings
        self._running: dict[str, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        # Set by stop(): redis-py can swallow a cancel that lands inside a connection handshake, and
        # the poll loop's wait then ends at once rather than a whole poll later.
        self._stopping = asyncio.Event()

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name="batch-runner")

    async def stop(self) -> None:
        """Stop driving batches and hand their leases back, so another replica resumes them at once."""
        self._stopping.set()
        tasks = [t for t in (self._loop_task, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def running_ids(self) -> list[str]:
        return sorted(self._running)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._take_free_batches()
            except TRANSIENT_ERRORS as exc:  # Redis down for a moment: try again at the next poll
                logger.warning("batch runner poll failed: %s: %s", type(exc).__name__, exc)
            except Exception:
                logger.exception("batch runner poll failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._settings.batch_poll_s)

    async def _take_free_batches(self) -> None:
        for batch_id in await self._store.runnable_ids():
            if len(self._running) >= self._settings.max_running_batches:
                return
            if batch_id in self._running:
                continue
            token = await self._store.acquire_lease(batch_id, self._settings.batch_lease_s)
            if token is not None:
                self._running[batch_id] = asyncio.create_task(
                    self._hold(batch_id, token), name=f"batch-{batch_id}"
                )

    async def _hold(self, batch_id: str, token: str) -> None:
        """Drive the batch while renewing its lease; give the lease back when done, failed or stopped."""
        try:
            tenant = await self._store.tenant_of(batch_id)
            if tenant is None:  # deleted under us
                return
            driver = BatchDriver(
                self._redis,
                self._store,
                self._files,
                self._executor,
                self._settings,
                batch_id,
                tenant,
            )
            drive = asyncio.create_task(driver.run())
            renew = asyncio.create_task(self._renew(batch_id, token))
            try:
                done, _ = await asyncio.wait({drive, renew}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (drive, renew):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            if drive in done and not drive.cancelled() and drive.exception() is not None:
                logger.error("batch %s failed; it will be resumed", batch_id, exc_info=drive.exception())
        finally:
            self._running.pop(batch_id, None)
            with contextlib.suppress(Exception):
                await self._store.release_lease(batch_id, token)

    async def _renew(self, batch_id: str, token: str) -> None:
        """Returns (ending the drive) as soon as the lease is no longer this replica's."""
        while True:
            await asyncio.sleep(self._settings.batch_lease_s / 3)
            if not await self._store.renew_lease(batch_id, token, self._settings.batch_lease_s):
                logger.warning("lost the lease of batch %s; another replica drives it now", batch_id)
                return
