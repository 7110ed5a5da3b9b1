"""The worker service: Redis I/O on an asyncio loop around an engine stepping in its own thread.

Tasks on the loop: intake (new and reclaimed requests, tokenized in a thread pool), replies (one
pipelined write per engine report), control (cancellations), heartbeat (load + refreshing held
messages). The engine thread only ever sees add/abort commands and token ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared import keys
from shared.messages import (
    CLASS_RANK,
    ReplyEvent,
    ReplyKind,
    TrafficClass,
    Usage,
    WorkerHeartbeat,
)
from shared.retry import FOREVER, REDIS_ERRORS, RetryPolicy
from worker.engine.tenant_share import TenantShare
from worker.service import intake
from worker.service.admission import plan_intake
from worker.service.beat import HeartbeatThread
from worker.service.control import read_cancels
from worker.service.engine_loop import AbortCommand, AddCommand, EngineLoop, EngineReport, ServedEngine
from worker.service.metrics import WorkerMetrics
from worker.service.prepare import PreparedRequest, RequestError, parse_request, prepare_request, req_id_of
from worker.service.readers import ReaderWatch, abandoned, has_lease
from worker.service.replies import ReplyBatch
from worker.service.reply_writer import ReplyWriter
from worker.service.resume import ResumeState, take_over
from worker.service.settings import WorkerSettings
from worker.service.tracker import RequestTracker, error_event, step_failed, too_many_deliveries
from worker.structured.grammar import GrammarCompiler
from worker.tokenizer import Tokenizer

log = logging.getLogger(__name__)

PREEMPTING_BLOCK_MS = 200
CLOSE_TIMEOUT_S = 5.0  # the background loops' longest read is 1 s


class WorkerService:
    """Serves one model: ``run()`` until ``stop()``, then drains within the grace period."""

    def __init__(
        self,
        settings: WorkerSettings,
        redis: Redis,
        model_name: str,
        engine: ServedEngine,
        tokenizer: Tokenizer,
        max_model_len: int,
        vocab_size: int,
        metrics: WorkerMetrics | None = None,
        tensor_parallel_size: int = 1,
        engine_cores: frozenset[int] = frozenset(),
    ) -> None:
        self.settings = settings
        self.worker_id = settings.worker_id
        self.model_name = model_name
        self._redis = redis
        self._tokenizer = tokenizer
        self._max_model_len = max_model_len
        self._vocab_size = vocab_size
        self._max_token_bytes = tokenizer.max_token_bytes
        self._grammars = GrammarCompiler(tokenizer.hf, vocab_size)
        self._tensor_parallel_size = tensor_parallel_size
        self._num_output_tokens = 0  # since start, for the heartbeat's tokens/s
        self._rate_mark = (time.monotonic(), 0)
        self._metrics = metrics
        self._tracker = RequestTracker(self.worker_id, tokenizer)
        self._reports: asyncio.Queue[EngineReport | None] = asyncio.Queue()  # None: no more reports
        self._loop: asyncio.AbstractEventLoop | None = None
        self._engine_loop = EngineLoop(engine, self._deliver, cpu_cores=engine_cores)
        self._writes = RetryPolicy(deadline_s=settings.write_deadline_s)
        self._writer = ReplyWriter(
            redis, self.worker_id, self._tracker, self._abort, self._writes, settings.reply_keep_s
        )
        self._readers = ReaderWatch(redis, self._cancel, cluster=settings.redis_cluster)
        partitions = keys.request_partitions(settings.redis_cluster)
        self._intake = intake.Intake(redis, model_name, self.worker_id, partitions)
        if metrics is not None:
            metrics.watch_shares(self._intake.fair.counters)
        self._beat = HeartbeatThread(
            settings.redis_url,
            keys.worker_key(model_name, self.worker_id),
            self._heartbeat,
            settings.heartbeat_interval_s,
            settings.heartbeat_ttl_s,
            settings.loop_stall_s,
            settings.redis_timeout_s,
            settings.redis_cluster,
        )
        self._next_reclaim = 0.0
        self._dead_claim_idle_ms = int(settings.heartbeat_interval_s * 1000)
        self._num_submitted = 0  # handed to the engine thread, not yet admitted or rejected
        self._capacity_changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._closing = asyncio.Event()  # set once the background loops must end
        self._forced = asyncio.Event()
        self.failed: str | None = None

    @property
    def is_stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self, force: bool = False) -> None:
        """Stop taking work; ``force`` also ends the grace period now."""
        self._stopping.set()
        if force:
            self._forced.set()
            self._capacity_changed.set()  # wake the drain

    def _deliver(self, report: EngineReport) -> None:  # engine thread
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._reports.put_nowait, report)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._register()
        self._beat.start()
        self._engine_loop.start()
        replies = asyncio.create_task(self._reply_loop(), name="replies")
        background = [
            asyncio.create_task(
                read_cancels(self._redis, self.worker_id, self._cancel, self._closing.is_set), name="control"
            ),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
        ]
        for task in (replies, *background):
            task.add_done_callback(self._on_task_done)
        log.info("worker %s serving %s", self.worker_id, self.model_name)
        try:
            await self._intake_loop()
            await self._drain()
        finally:
            await asyncio.to_thread(self._engine_loop.stop, 10.0)
            self._reports.put_nowait(None)
            await asyncio.gather(replies, return_exceptions=True)  # the last events reach Redis
            # Stopped by a flag as well as a cancel: redis-py can swallow a cancel that lands inside a
            # blocking read (redis/redis-py#2028); each loop sees the flag within one read.
            self._closing.set()
            for task in background:
                task.cancel()
            await asyncio.wait(background, timeout=CLOSE_TIMEOUT_S)
            self._intake.close()
            await asyncio.to_thread(self._beat.stop)
            with contextlib.suppress(*REDIS_ERRORS):
                await self._redis.delete(
                    keys.worker_key(self.model_name, self.worker_id), keys.control_stream(self.worker_id)
                )
        log.info("worker %s stopped", self.worker_id)

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        """A background loop that dies unexpectedly stops the worker: serving without it would be wrong."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("%s loop failed", task.get_name(), exc_info=task.exception())
        self.failed = f"{task.get_name()}: {task.exception()}"
        self.stop(force=True)

    async def _register(self) -> None:
        """Create the consumer groups and announce this worker; waits for Redis if it is not up yet."""
        await FOREVER.run(self._intake.ensure_groups, "register")
        await FOREVER.run(lambda: asyncio.to_thread(self._beat.beat_once), "register")

    # --- intake -------------------------------------------------------------------------------------

    def _plan_intake(self) -> tuple[int, tuple[TrafficClass, ...]]:
        priorities = [r.priority for r in self._tracker.active.values()]
        loop, max_batch = self._engine_loop, self.settings.max_intake_batch
        return plan_intake(loop.capacity, loop.stats, priorities, self._num_submitted, max_batch)

    async def _intake_loop(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                await self._intake_once()
                attempt = 0
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("request streams were deleted; creating them again")
                await FOREVER.run(self._intake.ensure_groups, "intake")
            except REDIS_ERRORS as exc:  # peers' heartbeats may lapse meanwhile: time to renew them
                self._next_reclaim = time.monotonic() + keys.OUTAGE_GRACE_S
                if FOREVER.is_worth_logging(attempt):
                    log.warning("intake: Redis unavailable (%s: %s); retrying", type(exc).__name__, exc)
                await asyncio.sleep(FOREVER.delay_s(attempt))
                attempt += 1

    def _below_share(self, classes: tuple[TrafficClass, ...]) -> dict[TrafficClass, frozenset[str]]:
        """With no room for the lowest class held, its tenants below their share of this worker's
        slots: their requests are read anyway (in the counters' order), and take a slot from a tenant
        above its share."""
        lowest = [tc for tc in intake.CLASS_ORDER if tc not in classes]
        if not lowest or lowest[0] not in keys.FAIR_CLASSES:
            return {}
        rank = CLASS_RANK[lowest[0]]
        active = [(r.charge.tenant, r.charge.weight) for r in self._tracker.active.values()
                  if r.priority == rank and r.charge is not None]
        num_slots = self._engine_loop.stats.num_running + self._engine_loop.capacity.num_free_seqs
        tenants = self._intake.fair.below_share(lowest[0], active, num_slots)
        return {lowest[0]: tenants} if tenants else {}

    async def _intake_once(self) -> None:
        count, classes = self._plan_intake()
        shares = self._below_share(classes) if classes != intake.CLASS_ORDER else {}
        if count == 0 and not shares:  # no room: wait for some
            self._capacity_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._capacity_changed.wait(), self.settings.heartbeat_interval_s)
            return
        if classes != intake.CLASS_ORDER:
            # Only the classes above the work held (and tenants below their share): a short block, so
            # that when lower classes may run again they are read within PREEMPTING_BLOCK_MS.
            higher = await self._intake.read_new(count, PREEMPTING_BLOCK_MS, classes, shares)
            if higher:
                await self._take(higher)
            return
        messages: list[intake.IntakeMessage] = []
        if time.monotonic() >= self._next_reclaim:
            self._next_reclaim = time.monotonic() + self.settings.heartbeat_interval_s
            messages = await self._intake.take_over(
                count, self._dead_claim_idle_ms, self.settings.reclaim_min_idle_ms
            )
        if not messages:
            block_ms = min(self.settings.intake_block_ms, int(self.settings.heartbeat_interval_s * 1000))
            messages = await self._intake.read_new(count, block_ms)
        if messages:
            await self._take(messages)

    async def _take(self, messages: list[intake.IntakeMessage]) -> None:
        held = set(self._tracker.held_messages())  # after an outage this worker may reclaim its own
        messages = [m for m in messages if m.message not in held]
        prepared = await asyncio.gather(*(self._prepare(m) for m in messages))
        for message, item in zip(messages, prepared, strict=True):
            if item is None:
                continue
            request, resume = item
            self._tracker.start(request, message.message, resume, message.charge)
            self._num_submitted += 1
            charge = message.charge
            share = None if charge is None else TenantShare(charge.tenant, charge.weight)
            self._engine_loop.submit(AddCommand(request, tuple(resume.output_token_ids), share))

    async def _prepare(self, msg: intake.IntakeMessage) -> tuple[PreparedRequest, ResumeState] | None:
        """Parse, resume and tokenize one message; answers and acks it itself when it cannot run.

        A Redis error leaves the message pending (this worker or another takes it again later); any
        other failure fails this request alone.
        """
        batch = ReplyBatch()
        req_id = req_id_of(msg.data)
        resume = ResumeState()
        try:
            req = parse_request(msg.data)
            if msg.is_reclaimed:
                resume = await self._writes.run(
                    lambda: take_over(self._redis, req.req_id, self.worker_id), "resume"
                )
                if resume.is_finished:  # its worker died between the final event and the ack
                    batch.finish(req.req_id, msg.message)
                    return None
                if resume.poisoned is not None:
                    raise RequestError(step_failed(resume.poisoned))
                if msg.num_deliveries > self.settings.max_deliveries:
                    raise RequestError(too_many_deliveries(msg.num_deliveries - 1))
                log.info("resuming %s after %d tokens", req.req_id, len(resume.output_token_ids))
            if req.gateway_id is not None and not await self._writes.run(
                lambda: has_lease(self._redis, req.req_id), "lease"
            ):
                raise RequestError(abandoned())  # e.g. answered 503 while Redis was out, then restored
            prepared = await asyncio.to_thread(
                prepare_request, req, self._tokenizer, self._max_model_len, self._vocab_size, self._grammars
            )
            if len(resume.output_token_ids) >= prepared.params.max_tokens:  # died just before DONE
                usage = Usage(
                    prompt_tokens=len(prepared.prompt_token_ids),
                    completion_tokens=len(resume.output_token_ids),
                )
                batch.add(
                    req.req_id,
                    ReplyEvent(seq=resume.next_seq, kind=ReplyKind.DONE, finish_reason="length", usage=usage),
                )
                batch.finish(req.req_id, msg.message)
                return None
            return prepared, resume
        except REDIS_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - a request that cannot be prepared fails alone
            why = f"{type(exc).__name__}: {exc}"
            error = exc.error if isinstance(exc, RequestError) else step_failed(why)
            log.warning("rejected request %s: %s", req_id, error.message)
            if req_id is not None:
                batch.add(req_id, error_event(resume.next_seq, error))
            batch.finish(req_id, msg.message)
            return None
        finally:
            await self._writer.write(batch)

    # --- replies ------------------------------------------------------------------------------------

    async def _reply_loop(self) -> None:
        is_last = False
        while not is_last:
            reports = [await self._reports.get()]
            while not self._reports.empty():  # fallen behind: catch up in one write
                reports.append(self._reports.get_nowait())
            batch = ReplyBatch()
            for report in reports:
                if report is None:
                    is_last = True
                    continue
                self._num_submitted -= len(report.admitted) + len(report.rejected)
                if report.fatal is not None:
                    # The worker is broken, not its requests: leave them pending for other workers
                    # (a request that breaks every worker is failed after max_deliveries).
                    self.failed = report.fatal
                    self._tracker.hand_back()
                    self.stop(force=True)
                    continue
                self._num_output_tokens += sum(len(out.new_token_ids) for out in report.outputs)
                if self._metrics is not None and report.outputs:
                    self._metrics.observe_step(report.stats)
                for req_id in self._tracker.apply(report, batch):
                    self._engine_loop.submit(AbortCommand(req_id))
            await self._writer.write(batch)
            self._capacity_changed.set()

    def _abort(self, req_id: str) -> None:
        self._engine_loop.submit(AbortCommand(req_id))

    def _cancel(self, req_id: str) -> None:
        if self._tracker.cancel(req_id):
            self._engine_loop.submit(AbortCommand(req_id))

    # --- heartbeat and shutdown ---------------------------------------------------------------------

    def _heartbeat(self) -> WorkerHeartbeat:  # heartbeat thread
        load = self._engine_loop.stats
        now, (then, num_then) = time.monotonic(), self._rate_mark
        self._rate_mark = (now, self._num_output_tokens)
        return WorkerHeartbeat(
            worker_id=self.worker_id,
            model=self.model_name,
            max_model_len=self._max_model_len,
            num_running=load.num_running,
            num_waiting=load.num_waiting,
            num_free_pages=load.num_free_pages,
            num_total_pages=load.num_total_pages,
            max_token_bytes=self._max_token_bytes,
            tensor_parallel_size=self._tensor_parallel_size,
            tokens_per_s=round((self._num_output_tokens - num_then) / max(now - then, 1e-3), 1),
            time=time.time(),
        )

    async def _heartbeat_loop(self) -> None:
        """Proves the loop alive to the beat thread, refreshes held messages, checks requests' readers."""
        failures = 0
        while not self._closing.is_set():
            await asyncio.sleep(FOREVER.delay_s(failures) if failures else self.settings.heartbeat_interval_s)
            self._beat.loop_ticked()
            try:
                await self._writer.refresh()
                await self._readers.check(self._tracker.active.values())
                failures = 0
            except REDIS_ERRORS as exc:
                self._readers.redis_failed()
                if FOREVER.is_worth_logging(failures):
                    log.warning("heartbeat failed: %s: %s", type(exc).__name__, exc)
                failures += 1

    async def _drain(self) -> None:
        """Let running requests finish within the grace period; leave the rest pending for others."""
        deadline = time.monotonic() + self.settings.grace_period_s
        while self._tracker.active and time.monotonic() < deadline and not self._forced.is_set():
            self._capacity_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._capacity_changed.wait(), max(0.0, deadline - time.monotonic()))
        left = self._tracker.hand_back()
        for req_id in left:
            self._engine_loop.submit(AbortCommand(req_id))
        if left:
            log.info("left %d unfinished requests for other workers", len(left))

