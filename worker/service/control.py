"""The worker's control stream: cancellations from the gateway, read as they arrive."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from shared import keys
from shared.messages import CancelRequest, MessageError, decode
from shared.retry import FOREVER, REDIS_ERRORS

log = logging.getLogger(__name__)


def parse_cancel(fields: dict[str, str]) -> CancelRequest | None:
    """The entry's CancelRequest; None (logged, then skipped) for one this worker cannot read."""
    try:
        return decode(CancelRequest, fields)
    except MessageError as exc:
        log.warning("ignoring control message: %s", exc)
        return None


async def read_cancels(
    redis: Redis,
    worker_id: str,
    on_cancel: Callable[[str], None],
    is_closing: Callable[[], bool] = lambda: False,
    block_ms: int = 1000,
) -> None:
    """Call ``on_cancel(req_id)`` for each CancelRequest sent to ``worker_id`` from now on, until
    ``is_closing()`` (checked after every read, so within ``block_ms``)."""
    stream = keys.control_stream(worker_id)
    last_id = "$"
    attempt = 0
    while not is_closing():
        try:
            reply: Any = await redis.xread({stream: last_id}, count=100, block=block_ms)
            attempt = 0
        except REDIS_ERRORS as exc:
            if FOREVER.is_worth_logging(attempt):
                log.warning("control: Redis unavailable (%s: %s); retrying", type(exc).__name__, exc)
            await asyncio.sleep(FOREVER.delay_s(attempt))
            attempt += 1
            continue
        for _name, entries in reply or []:
            for entry_id, fields in entries:
                last_id = entry_id
                cancel = parse_cancel(fields or {})
                if cancel is not None:
                    on_cancel(cancel.req_id)
