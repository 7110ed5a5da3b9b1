"""The worker's control stream: cancellations from the gateway, read as they arrive."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from shared import keys
from shared.messages import DATA_FIELD, CancelRequest

log = logging.getLogger(__name__)


async def read_cancels(
    redis: Redis, worker_id: str, on_cancel: Callable[[str], None], block_ms: int = 1000
) -> None:
    """Call ``on_cancel(req_id)`` for each CancelRequest sent to ``worker_id`` from now on."""
    stream = keys.control_stream(worker_id)
    last_id = "$"
    while True:
        try:
            reply: Any = await redis.xread({stream: last_id}, count=100, block=block_ms)
        except (RedisConnectionError, TimeoutError) as exc:
            log.warning("control: Redis unavailable (%s); retrying", exc)
            await asyncio.sleep(1.0)
            continue
        for _name, entries in reply or []:
            for entry_id, fields in entries:
                last_id = entry_id
                try:
                    cancel = CancelRequest.model_validate_json(fields.get(DATA_FIELD, ""))
                except ValidationError:
                    log.warning("ignoring unreadable control message %s", entry_id)
                    continue
                on_cancel(cancel.req_id)
