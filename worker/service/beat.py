"""The worker's heartbeat, written from a thread of its own with its own Redis connection.

Live workers take over a dead one's requests as soon as its heartbeat key expires, so the key's TTL is
the stall a client sees when a worker dies. Written from the event loop, the beat waited behind
whatever the loop was doing (preparing a long prompt, compiling a grammar, a burst of replies), and a
short TTL then made a busy worker look dead. A thread beats on time whatever the loop does; the engine
releases the GIL inside its kernels.

A beat that outlived its loop would hide a hung worker forever, so the thread beats only while the
event loop has ticked within ``loop_stall_s``; a stopped process (SIGSTOP) beats nothing at all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from shared.messages import WorkerHeartbeat
from shared.redis_client import connect_sync
from shared.retry import FOREVER, REDIS_ERRORS

log = logging.getLogger(__name__)


class HeartbeatThread:
    def __init__(
        self,
        redis_url: str,
        key: str,
        snapshot: Callable[[], WorkerHeartbeat],
        interval_s: float,
        ttl_s: float,
        loop_stall_s: float,
        timeout_s: float,
        cluster: bool = False,
    ) -> None:
        # The socket timeout stays below the TTL: a beat stuck on a dead connection is retried in time.
        timeout_s = min(timeout_s, ttl_s / 2)
        self._redis = connect_sync(redis_url, timeout_s, cluster)
        self._key = key
        self._snapshot = snapshot
        self._interval_s, self._ttl_ms = interval_s, int(ttl_s * 1000)
        self._loop_stall_s = loop_stall_s
        self._loop_tick = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def beat_once(self) -> None:
        """One beat now (raises on a Redis error): registration waits for it before taking work."""
        self._redis.set(self._key, self._snapshot().model_dump_json(), px=self._ttl_ms)

    def loop_ticked(self) -> None:
        """Called from the event loop on each of its own heartbeat rounds."""
        self._loop_tick = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop beating (the caller deletes the key: a worker that stops must vanish at once)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._redis.close()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            started = time.monotonic()
            if started - self._loop_tick > self._loop_stall_s:
                if FOREVER.is_worth_logging(failures):
                    log.error("event loop stalled for %.0f s; not beating", started - self._loop_tick)
                failures += 1
            else:
                try:
                    self.beat_once()
                    failures = 0
                except REDIS_ERRORS as exc:  # after a failure, sooner: gateways route here again at once
                    if FOREVER.is_worth_logging(failures):
                        log.warning("heartbeat failed: %s: %s", type(exc).__name__, exc)
                    failures += 1
            wait_s = FOREVER.delay_s(failures) if failures else self._interval_s
            self._stop.wait(max(0.0, wait_s - (time.monotonic() - started)))
