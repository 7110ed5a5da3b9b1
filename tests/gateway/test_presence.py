"""GatewayPresence against a real Redis: the liveness key, request leases and slot leases it renews."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from gateway.transport.presence import GatewayPresence
from shared import keys


@dataclass(eq=False)  # held by identity, as the gateway's own objects are
class Request:
    req_id: str
    is_finished: bool = False


@dataclass(eq=False)  # held by identity, as the gateway's own objects are
class Slot:
    slot: tuple[str, str] | None


def wait_until(check, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_live_gateway_renews_its_key_leases_and_slots_then_removes_its_key(redis_url: str) -> None:
    store = redis.Redis.from_url(redis_url, decode_responses=True)
    inflight = keys.ratelimit_key("k", "inflight")
    store.zadd(inflight, {"r1": 0, "released": 0})  # scores are lease expiries: these are long expired
    presence = GatewayPresence(
        redis_url, "gw-1", timeout_s=2.0, beat_s=0.05, ttl_s=0.5, renew_s=0.1, lease_s=3
    )
    served, done = Request("r1"), Request("r2")
    presence.serve(served)
    presence.serve(done)
    slot = Slot((inflight, "r1"))
    presence.hold(slot)
    presence.start()
    try:
        wait_until(lambda: store.exists(keys.request_lease("r1"), keys.request_lease("r2")) == 2)
        time.sleep(1.0)  # twice the key's TTL: it lives on only if renewed
        assert store.exists(keys.gateway_key("gw-1"))
        assert 0 < store.pttl(keys.gateway_key("gw-1")) <= 500
        assert store.get(keys.request_lease("r1")) == "gw-1"
        now_ms = int(store.time()[0]) * 1000
        assert store.zscore(inflight, "r1") > now_ms  # renewed into the future
        assert store.zscore(inflight, "released") == 0  # not this gateway's slot: left alone

        done.is_finished = True
        wait_until(lambda: not store.exists(keys.request_lease("r2")))
        assert store.exists(keys.request_lease("r1"))
    finally:
        presence.stop()
    assert not store.exists(keys.gateway_key("gw-1"))
    store.close()
