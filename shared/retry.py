"""One retry policy for every Redis call of the gateway and the worker.

A Redis that stalls (``DEBUG SLEEP``, a failover, a full disk) or a process that was paused shows up
as redis-py's ``ConnectionError`` or ``TimeoutError`` (neither is the built-in ``TimeoutError``), or
as an ``OSError`` from the socket. Such errors are retried with exponential backoff and full jitter,
so many clients do not come back in step, until the operation's deadline; any other error is a real
answer and is raised at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from redis.exceptions import ClusterError, ReadOnlyError, RedisError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

T = TypeVar("T")

# What a stalled or unreachable Redis raises; a BusyLoadingError (Redis loading its AOF) is a
# ConnectionError too. During a Redis Cluster failover a client also sees the cluster as down, a slot
# with no primary yet, TRYAGAIN, or READONLY from a primary just turned replica.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    TimeoutError,
    ClusterError,
    SlotNotCoveredError,
    TryAgainError,
    ReadOnlyError,
)

# Every error a Redis call can end in: the transient ones and Redis's own answers (e.g. OOM, NOGROUP).
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, *TRANSIENT_ERRORS)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT_ERRORS)


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff from ``base_s`` doubling up to ``cap_s``, for at most ``deadline_s`` (inf: forever)."""

    base_s: float = 0.05
    cap_s: float = 2.0
    deadline_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.base_s <= self.cap_s:
            raise ValueError("need 0 < base_s <= cap_s")
        if self.deadline_s < 0:
            raise ValueError("deadline_s must be >= 0")

    @staticmethod
    def is_worth_logging(attempt: int) -> bool:
        """The 1st, 2nd, 4th, 8th, ... failure in a row: an outage logs a few lines, not one per retry."""
        return attempt & (attempt - 1) == 0

    def delay_s(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
        return random.uniform(0.0, min(self.cap_s, self.base_s * 2 ** min(attempt, 30)))

    async def run(
        self, operation: Callable[[], Awaitable[T]], what: str, deadline_s: float | None = None
    ) -> T:
        """Await ``operation()`` until it succeeds; re-raise its transient error once the deadline passes."""
        deadline = time.monotonic() + (self.deadline_s if deadline_s is None else deadline_s)
        attempt = 0
        while True:
            try:
                return await operation()
            except TRANSIENT_ERRORS as exc:
                delay = self.delay_s(attempt)
                if time.monotonic() + delay > deadline:
                    raise
                if attempt == 0 or math.log2(attempt + 1).is_integer():  # 1st, 3rd, 7th, ... attempt
                    log.warning("%s: Redis unavailable (%s: %s); retrying", what, type(exc).__name__, exc)
                attempt += 1
                await asyncio.sleep(delay)


# Loops that must outlive any outage (intake, control, heartbeat) retry forever, at least every
# quarter second, so a worker serves again within that of Redis returning.
FOREVER = RetryPolicy(cap_s=0.25, deadline_s=math.inf)
