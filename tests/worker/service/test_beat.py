"""The heartbeat thread on a real Redis: it beats through a blocked event loop, not through a hung one."""

from __future__ import annotations

import time

import redis

from shared.messages import WorkerHeartbeat
from worker.service.beat import HeartbeatThread

KEY = "busstop:workers:tiny:w-beat"


def snapshot() -> WorkerHeartbeat:
    return WorkerHeartbeat(worker_id="w-beat", model="tiny", max_model_len=64, time=time.time())


def make_beat(redis_url: str, loop_stall_s: float) -> HeartbeatThread:
    return HeartbeatThread(
        redis_url, KEY, snapshot, interval_s=0.1, ttl_s=0.5, loop_stall_s=loop_stall_s, timeout_s=5.0
    )


def test_the_key_lives_while_the_loop_is_busy_for_longer_than_the_ttl(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    beat = make_beat(redis_url, loop_stall_s=30.0)
    beat.beat_once()
    beat.start()
    try:
        deadline = time.monotonic() + 2.0  # four TTLs without a loop tick, holding the GIL in between
        seen = []
        while time.monotonic() < deadline:
            sum(range(200_000))
            seen.append(client.exists(KEY))
        assert all(seen) and len(seen) > 10
    finally:
        beat.stop()
        client.close()


def test_a_loop_that_stops_ticking_stops_the_beat_and_the_key_expires(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    beat = make_beat(redis_url, loop_stall_s=0.3)
    beat.start()
    try:
        for _ in range(10):  # a ticking loop keeps it alive past its stall limit
            beat.loop_ticked()
            time.sleep(0.1)
        assert client.exists(KEY)
        time.sleep(0.3 + 0.5 + 0.2)  # stall limit + TTL + slack
        assert not client.exists(KEY)
        beat.loop_ticked()
        time.sleep(0.3)
        assert client.exists(KEY)  # beats again once the loop is back
    finally:
        beat.stop()
        client.close()
