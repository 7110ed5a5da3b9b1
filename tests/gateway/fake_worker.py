"""A stand-in worker for gateway tests: it speaks the Redis protocol of ``shared/messages.py`` and
``shared/keys.py`` (heartbeat, consumer group, reply events, control stream) and answers every
request with a fixed list of words, one word per token, instead of running a model."""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared import keys
from shared.messages import (
    DATA_FIELD,
    CancelRequest,
    ErrorInfo,
    GenerateRequest,
    ReplyEvent,
    ReplyKind,
    TokenLogprob,
    TopLogprob,
    TrafficClass,
    Usage,
    WorkerHeartbeat,
)

WORDS = ("Hello", ",", " world", "!")
# A prompt containing this is refused the way a worker refuses one over the context window.
TOO_LONG = "<<too long>>"


class FakeWorker:
    def __init__(
        self,
        redis_url: str,
        model: str = "tiny",
        worker_id: str = "fake-1",
        words: tuple[str, ...] = WORDS,
        delay_s: float = 0.0,
        max_model_len: int = 64,
        fail_after: int | None = None,
        max_token_bytes: int = 0,
    ) -> None:
        self.redis = Redis.from_url(redis_url, decode_responses=True)
        self.model = model
        self.worker_id = worker_id
        self.words = words
        self.delay_s = delay_s
        self.max_model_len = max_model_len
        self.fail_after = fail_after  # fail every request with a 500 after this many deltas
        self.max_token_bytes = max_token_bytes  # announced in the heartbeat; 0: unknown
        self.requests: list[GenerateRequest] = []
        self.streams: dict[str, TrafficClass] = {}  # req_id -> the class stream it came from
        self.cancelled: set[str] = set()
        self.acked: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        # Stopped by a flag, not task.cancel(): redis-py can swallow a cancel that lands inside a
        # blocking read (redis/redis-py#2028), which would leave the task running.
        self._is_stopping = False

    async def __aenter__(self) -> FakeWorker:
        for tc in TrafficClass:
            with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
                await self.redis.xgroup_create(
                    keys.request_stream(self.model, tc), keys.WORKER_GROUP, "0", mkstream=True
                )
        await self._beat()
        self._loop_task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: tuple[type[BaseException], BaseException, TracebackType] | None) -> None:
        assert self._loop_task is not None
        self._is_stopping = True
        await asyncio.gather(self._loop_task, *self._tasks)
        await self.redis.delete(keys.worker_key(self.model, self.worker_id))
        await self.redis.aclose()

    async def _beat(self) -> None:
        beat = WorkerHeartbeat(
            worker_id=self.worker_id,
            model=self.model,
            max_model_len=self.max_model_len,
            max_token_bytes=self.max_token_bytes,
            time=time.time(),
        )
        await self.redis.set(
            keys.worker_key(self.model, self.worker_id),
            beat.model_dump_json(),
            px=int(keys.HEARTBEAT_TTL_S * 1000),
        )

    async def _tenant_streams(self, classes: dict[str, TrafficClass]) -> None:
        """Add the internal classes' tenant streams gateways registered (a first-come reader, no shares)."""
        for tc in keys.FAIR_CLASSES:
            for tenant in await self.redis.hkeys(keys.tenants_key(self.model, tc)):
                stream = keys.request_stream(self.model, tc, 0, tenant)
                if stream not in classes:
                    with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
                        await self.redis.xgroup_create(stream, keys.WORKER_GROUP, "0", mkstream=True)
                    classes[stream] = tc

    async def _run(self) -> None:
        classes = {keys.request_stream(self.model, tc): tc for tc in TrafficClass}
        control = keys.control_stream(self.worker_id)
        control_id = "0-0"
        while not self._is_stopping:
            await self._beat()
            await self._tenant_streams(classes)
            found: Any = await self.redis.xreadgroup(
                keys.WORKER_GROUP, self.worker_id, dict.fromkeys(classes, ">"), count=16, block=20
            )
            for stream, entries in found or ():
                for msg_id, fields in entries:
                    req = GenerateRequest.model_validate_json(fields[DATA_FIELD])
                    self.requests.append(req)
                    self.streams[req.req_id] = classes[stream]
                    task = asyncio.create_task(self._serve(stream, msg_id, req))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            controls: Any = await self.redis.xread({control: control_id}, count=100)
            for _stream, entries in controls or ():
                for entry_id, fields in entries:
                    control_id = entry_id
                    self.cancelled.add(CancelRequest.model_validate_json(fields[DATA_FIELD]).req_id)

    async def _reply(self, req_id: str, event: ReplyEvent) -> None:
        await self.redis.xadd(keys.reply_stream(req_id), {DATA_FIELD: event.model_dump_json()})

    async def _serve(self, stream: str, msg_id: str, req: GenerateRequest) -> None:
        prompt = req.prompt or " ".join(m.content for m in req.messages or [])
        if TOO_LONG in prompt:
            error = ErrorInfo(
                status=400, message="prompt too long", param="messages", code="context_length_exceeded"
            )
            await self._reply(req.req_id, ReplyEvent(seq=0, kind=ReplyKind.ERROR, error=error))
            await self._ack(stream, msg_id, req.req_id)
            return
        num_prompt = max(len(prompt.split()), len(req.prompt_token_ids or []))
        await self._reply(
            req.req_id,
            ReplyEvent(
                seq=0,
                kind=ReplyKind.ACCEPTED,
                worker_id=self.worker_id,
                usage=Usage(prompt_tokens=num_prompt),
            ),
        )
        words = self.words[: req.sampling.max_tokens]
        finish = "length" if len(words) < len(self.words) else "stop"
        seq = 1
        for i, word in enumerate(words):
            if i == self.fail_after:
                error = ErrorInfo(status=500, message="the engine failed", type="server_error")
                await self._reply(req.req_id, ReplyEvent(seq=seq, kind=ReplyKind.ERROR, error=error))
                await self._ack(stream, msg_id, req.req_id)
                return
            if req.req_id in self.cancelled or self._is_stopping:
                finish = "abort"
                words = words[:i]
                break
            logprobs = None
            if req.sampling.logprobs is not None:
                top = [
                    TopLogprob(token=w, logprob=-1.0 - k)
                    for k, w in enumerate(self.words[: req.sampling.logprobs])
                ]
                logprobs = [TokenLogprob(token=word, logprob=-0.5, top=top)]
            delta = ReplyEvent(seq=seq, kind=ReplyKind.DELTA, text=word, token_ids=[i], logprobs=logprobs)
            await self._reply(req.req_id, delta)
            seq += 1
            await asyncio.sleep(self.delay_s)
        usage = Usage(prompt_tokens=num_prompt, completion_tokens=len(words))
        await self._reply(
            req.req_id, ReplyEvent(seq=seq, kind=ReplyKind.DONE, finish_reason=finish, usage=usage)
        )
        await self._ack(stream, msg_id, req.req_id)

    async def _ack(self, stream: str, msg_id: str, req_id: str) -> None:
        await self.redis.xack(stream, keys.WORKER_GROUP, msg_id)
        self.acked.add(req_id)
