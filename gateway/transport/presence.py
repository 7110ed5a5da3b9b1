"""This gateway's presence in Redis: its liveness key and the leases of the requests it serves.

Workers abort a request nobody reads: the requests of a gateway whose liveness key is gone (it died),
and, before running one or after an outage, a request whose lease is gone (its gateway gave up on it).
The key and the leases are renewed from threads of their own (one each) with their own connections,
so a busy event loop, or one slow node of a cluster, never makes a live gateway look dead; a gateway
that dies stops renewing within one beat.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Protocol

from shared import keys
from shared.redis_client import LuaScript, connect_sync, execute_loading_sync
from shared.retry import FOREVER, REDIS_ERRORS

log = logging.getLogger(__name__)

_RENEW_SLOTS = LuaScript((Path(__file__).parents[1] / "ratelimit" / "renew.lua").read_text())
# A lease is dropped only while this gateway holds it: a client may have resumed the stream elsewhere.
_DROP_OWN = LuaScript(
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


class Served(Protocol):
    """A request this gateway waits for (a ``Generation``)."""

    @property
    def req_id(self) -> str: ...
    @property
    def is_finished(self) -> bool: ...


class HeldSlot(Protocol):
    """A concurrency slot of an API key (a ``RateLimitLease``)."""

    @property
    def slot(self) -> tuple[str, str] | None: ...  # (in-flight set key, req_id); None once released


class GatewayPresence:
    def __init__(
        self,
        redis_url: str,
        gateway_id: str,
        timeout_s: float,
        beat_s: float = keys.GATEWAY_BEAT_S,
        ttl_s: float = keys.GATEWAY_TTL_S,
        renew_s: float = keys.LEASE_RENEW_S,
        lease_s: float = keys.LEASE_S,
        slot_lease_s: float = keys.RATELIMIT_LEASE_S,
        cluster: bool = False,
    ) -> None:
        self.gateway_id = gateway_id
        self._redis = connect_sync(redis_url, timeout_s, cluster)
        # Each liveness key has a thread and a connection of its own: leases span every node of a
        # cluster, and one slow or failing node must not keep a key on another from being renewed.
        self._liveness = {key: connect_sync(redis_url, timeout_s, cluster)
                          for key in keys.gateway_keys(gateway_id, cluster)}  # fmt: skip
        self._beat_s, self._ttl_ms = beat_s, int(ttl_s * 1000)
        self._renew_s, self._lease_ms = renew_s, int(lease_s * 1000)
        self._slot_lease_ms = int(slot_lease_s * 1000)
        self._served: weakref.WeakSet[Served] = weakref.WeakSet()
        self._slots: weakref.WeakSet[HeldSlot] = weakref.WeakSet()
        self._leased: set[str] = set()  # req_ids whose lease this gateway set and has not deleted
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gateway-leases", daemon=True)
        self._alive_threads = [
            threading.Thread(
                target=self._run_liveness, args=(key,), name=f"gateway-liveness-{n}", daemon=True
            )
            for n, key in enumerate(self._liveness)
        ]

    def serve(self, request: Served) -> None:
        """Renew ``request``'s lease until it is finished (or forgotten); its lease is set at submit."""
        with self._lock:
            self._served.add(request)
            self._leased.add(request.req_id)

    def hold(self, slot: HeldSlot) -> None:
        """Renew ``slot`` until it is released."""
        with self._lock:
            self._slots.add(slot)

    def start(self) -> None:
        for thread in (self._thread, *self._alive_threads):
            thread.start()

    def stop(self) -> None:
        """Stop renewing and remove the liveness key, so workers abort what is left at once."""
        self._stop.set()
        for thread in (self._thread, *self._alive_threads):
            if thread.is_alive():
                thread.join(timeout=5)
        for key, client in self._liveness.items():
            try:
                client.delete(key)
            except REDIS_ERRORS as exc:
                log.warning("could not remove the gateway's liveness key: %s", exc)
            client.close()
        self._redis.close()

    def _run_liveness(self, key: str) -> None:
        client, failures = self._liveness[key], 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                client.set(key, "1", px=self._ttl_ms)
                failures = 0
            except REDIS_ERRORS as exc:
                if FOREVER.is_worth_logging(failures):
                    log.warning("gateway liveness: Redis unavailable (%s: %s)", type(exc).__name__, exc)
                failures += 1
            self._stop.wait(max(0.0, self._beat_s - (time.monotonic() - started)))

    def _run(self) -> None:
        next_renewal = 0.0
        failures = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._beat(renew=started >= next_renewal)
                if started >= next_renewal:
                    next_renewal = started + self._renew_s
                failures = 0
            except REDIS_ERRORS as exc:  # tried again next beat; leases are renewed as soon as it works
                if FOREVER.is_worth_logging(failures):
                    log.warning("gateway presence: Redis unavailable (%s: %s)", type(exc).__name__, exc)
                failures += 1
                next_renewal = 0.0
            self._stop.wait(max(0.0, self._beat_s - (time.monotonic() - started)))

    def _beat(self, renew: bool) -> None:
        """Leases of finished requests are deleted first, so a request given up on during an outage is
        never run once Redis returns (workers look at leases after an outage); then, every
        ``renew_s``, the leases of the others."""
        with self._lock:
            live = {r.req_id for r in list(self._served) if not r.is_finished}
            ended = self._leased - live
            slots = [s.slot for s in list(self._slots)]
        by_set: dict[str, list[str]] = {}
        for slot in slots:
            if slot is not None:
                by_set.setdefault(slot[0], []).append(slot[1])

        def drop(pipe: Any) -> None:
            for req_id in ended:
                _DROP_OWN.queue(pipe, [keys.request_lease(req_id)], [self.gateway_id])

        def renew_all(pipe: Any) -> None:
            for req_id in live:
                pipe.set(keys.request_lease(req_id), self.gateway_id, px=self._lease_ms)
            for inflight, req_ids in by_set.items():
                _RENEW_SLOTS.queue(pipe, [inflight], [self._slot_lease_ms, *req_ids])

        if ended:
            execute_loading_sync(self._redis, drop, [_DROP_OWN])
        if renew:
            execute_loading_sync(self._redis, renew_all, [_RENEW_SLOTS])
        with self._lock:
            self._leased -= ended
