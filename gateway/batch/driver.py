"""Drives one batch from ``validating`` to a final status; safe to run again after a crash at any point.

Lines are fed to the ``batch`` request stream through a bounded window (at most ``batch_window`` in
flight), in file order. Progress lives in Redis (``BatchStore``), so a driver started on another
replica skips lines already finished, waits on lines already submitted instead of submitting them
again, and finishes the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import Redis

from gateway.batch.config import BatchSettings
from gateway.batch.files import FileStore
from gateway.batch.lines import (
    BatchLine,
    LineError,
    count_lines,
    error_line,
    line_id,
    output_line,
    parse_lines,
)
from gateway.batch.models import Batch, BatchStatus
from gateway.batch.reply import Submitted, await_line
from gateway.batch.serving import ServingExecutor
from gateway.batch.store import BatchStore, errors_of
from gateway.core.errors import OpenAIError
from gateway.telemetry.request import CLIENT_CLOSED
from shared.messages import ReplyKind

logger = logging.getLogger(__name__)


class BatchDriver:
    def __init__(
        self,
        redis: Redis,
        store: BatchStore,
        files: FileStore,
        executor: ServingExecutor,
        settings: BatchSettings,
        batch_id: str,
        tenant: str,
    ) -> None:
        self._redis = redis
        self._store = store
        self._files = files
        self._executor = executor
        self._settings = settings
        self._batch_id = batch_id
        self._tenant = tenant
        self._stopping = (
            asyncio.Event()
        )  # set on cancel or expiry: submit nothing more, abort in-flight lines

    async def run(self) -> None:
        while (batch := await self._store.get(self._batch_id)) is not None:
            if batch.status == BatchStatus.VALIDATING:
                await self._validate(batch)
            elif batch.status == BatchStatus.IN_PROGRESS:
                if await self._run_lines(batch):
                    await self._close(batch, BatchStatus.IN_PROGRESS, BatchStatus.EXPIRED)
                else:
                    await self._store.transition(batch.id, (BatchStatus.IN_PROGRESS,), BatchStatus.FINALIZING)
            elif batch.status == BatchStatus.CANCELLING:
                self._stopping.set()
                await self._run_lines(batch)
                await self._close(batch, BatchStatus.CANCELLING, BatchStatus.CANCELLED)
            elif batch.status == BatchStatus.FINALIZING:
                await self._close(batch, BatchStatus.FINALIZING, BatchStatus.COMPLETED)
            else:
                return

    async def _validate(self, batch: Batch) -> None:
        failure = None
        if await self._files.get(self._tenant, batch.input_file_id) is None:
            failure = errors_of("file_not_found", f"input file {batch.input_file_id} no longer exists")
        else:
            total = await asyncio.to_thread(count_lines, self._files.iter_lines(batch.input_file_id))
            if total == 0:
                failure = errors_of("empty_file", "the input file has no lines")
            elif total > self._settings.max_batch_lines:
                failure = errors_of(
                    "too_many_lines", f"{total} lines; at most {self._settings.max_batch_lines}"
                )
            else:
                await self._store.set_total(batch.id, total)
        if failure is not None:
            await self._store.transition(
                batch.id, (BatchStatus.VALIDATING,), BatchStatus.FAILED, errors=failure
            )
        else:
            await self._store.transition(batch.id, (BatchStatus.VALIDATING,), BatchStatus.IN_PROGRESS)

    async def _run_lines(self, batch: Batch) -> bool:
        """Feed and finish the lines; ``True`` if the batch expired on the way. Returns early on cancel."""
        finished = await self._store.finished_lines(batch.id)
        submitted = await self._store.submitted(batch.id)
        watcher = asyncio.create_task(self._watch(batch))
        in_flight: set[asyncio.Task[None]] = set()
        try:
            has_input = self._files.path(batch.input_file_id).is_file()  # gone only if deleted mid-batch
            source = self._files.iter_lines(batch.input_file_id) if has_input else iter(())
            for item in parse_lines(source, batch.endpoint):
                if item.index in finished:
                    continue
                if isinstance(item, LineError):
                    await self._store.record(batch.id, item.index, error_line(batch.id, item), is_ok=False)
                    continue
                prior = submitted.get(item.index)
                if self._stopping.is_set() and prior is None:
                    continue  # never submitted: nothing to wait for or abort
                while len(in_flight) >= self._settings.batch_window:
                    done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()  # surface a line's unexpected failure
                in_flight.add(asyncio.create_task(self._run_line(batch, item, prior)))
            await self._drain(in_flight)
        finally:
            watcher.cancel()
            for task in in_flight:
                task.cancel()
        return self._is_expired(batch)

    async def _drain(self, in_flight: set[asyncio.Task[None]]) -> None:
        """Wait for the in-flight lines; after a stop, for at most the cancel grace period."""
        while in_flight:
            timeout = (
                self._settings.batch_cancel_grace_s
                if self._stopping.is_set()
                else self._settings.batch_poll_s
            )
            done, in_flight = await asyncio.wait(in_flight, timeout=timeout)
            for task in done:
                task.result()  # surface a line's unexpected failure
            if self._stopping.is_set() and not done:
                logger.warning(
                    "batch %s: %d lines did not stop within the grace period", self._batch_id, len(in_flight)
                )
                return

    async def _run_line(self, batch: Batch, line: BatchLine, prior: tuple[str, str] | None) -> None:
        req_id = line_id(batch.id, line.index)
        try:
            request = await self._executor.build(batch.endpoint, line.body, req_id, self._tenant)
        except OpenAIError as exc:  # the line cannot run (bad body, unknown model): its answer is the error
            out = output_line(batch.id, line.index, line.custom_id, exc.status, exc.body())
            await self._store.record(batch.id, line.index, out, is_ok=False)
            return
        generation = self._executor.generation(request)
        stream = generation.request_stream
        if prior is None or not prior[1]:  # never submitted, or its runner died while submitting
            prior = await self._store.submit(batch.id, line.index, req_id, generation.enqueue)
        line_sent = Submitted(prior[0], stream, prior[1])
        events = await await_line(
            generation, self._redis, line_sent, self._stopping, self._settings.batch_lost_check_s
        )
        if events is None or (events[-1].kind == ReplyKind.DONE and events[-1].finish_reason == "abort"):
            generation.telemetry.finish(CLIENT_CLOSED)
            return  # stopped by cancel or expiry: the line has no result
        status, body = self._executor.respond(batch.endpoint, request, events)
        out = output_line(batch.id, line.index, line.custom_id, status, body)
        await self._store.record(batch.id, line.index, out, is_ok=status == 200)

    async def _watch(self, batch: Batch) -> None:
        """Set ``stopping`` when the batch is cancelled or expires."""
        while not self._stopping.is_set():
            current = await self._store.get(batch.id)
            if current is None or current.status != BatchStatus.IN_PROGRESS or self._is_expired(batch):
                self._stopping.set()
                return
            await asyncio.sleep(self._settings.batch_poll_s)

    def _is_expired(self, batch: Batch) -> bool:
        return batch.expires_at is not None and time.time() >= batch.expires_at

    async def _close(self, batch: Batch, current: BatchStatus, final: BatchStatus) -> None:
        """Write the output and error files, then move to ``final`` once (fixed ids: a redo overwrites)."""
        stem = batch.id.removeprefix("batch_")
        fields: dict[str, str] = {}
        for kind, field, suffix in (
            ("results", "output_file_id", "output"),
            ("errors", "error_file_id", "error"),
        ):
            lines = await self._store.lines(batch.id, kind)
            if lines:
                file_id = f"file-{stem}-{suffix}"
                name = f"{batch.id}_{suffix}.jsonl"
                await self._files.write_lines(self._tenant, file_id, name, "batch_output", lines)
                fields[field] = file_id
        if await self._store.transition(batch.id, (current,), final, **fields):
            await self._store.drop_lines(batch.id)
