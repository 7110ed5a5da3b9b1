"""Fair shares between tenants of an internal class: whose request a worker takes next.

Each internal request waits on its tenant's stream (``shared/keys.py``). A worker that has room takes
the next one with ``fair_read.lua``: the tenant with queued work and the lowest virtual token counter
(tokens served divided by weight, VTC: "Fairness in Serving Large Language Models", OSDI '24) goes
first, and is charged the request's expected cost. The counters live in Redis, so every worker picks
from the same ones and the shares hold across the pool. When the request ends, the worker settles the
difference between what it was charged and the tokens it took (``Charge.settlement``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from shared import keys
from shared.messages import TrafficClass
from shared.redis_client import LuaScript
from worker.service.intake_message import Charge, IntakeMessage
from worker.service.replies import HeldMessage

_FAIR_READ = LuaScript((Path(__file__).parent / "fair_read.lua").read_text())
UNTENANTED = ""  # the class's own stream: requests that name no tenant, weight 1


@dataclass(frozen=True)
class TenantStream:
    traffic_class: TrafficClass
    partition: int
    tenant: str
    weight: float


class FairIntake:
    """One worker's reads of the internal classes' tenant streams, and the counters it last saw."""

    def __init__(self, redis: Redis, model: str, consumer: str) -> None:
        self._redis, self._model, self._consumer = redis, model, consumer
        self._streams: dict[str, TenantStream] = {}  # every tenant stream seen, by name
        self.counters: dict[tuple[str, str], float] = {}  # (class, tenant) -> virtual tokens

    def known_streams(
        self, partition: int, classes: tuple[TrafficClass, ...] = keys.FAIR_CLASSES
    ) -> list[str]:
        """The tenant streams of ``partition`` and ``classes`` seen so far (blocking reads and reclaims
        cover them)."""
        return [
            name for name, s in self._streams.items()
            if s.partition == partition and s.tenant and s.traffic_class in classes
        ]

    async def found_new_tenants(self, partitions: int) -> bool:
        """Whether gateways registered tenants of the internal classes not seen so far (reads the
        registries: one HGETALL per class and partition)."""
        before = len(self._streams)
        for traffic_class in keys.FAIR_CLASSES:
            for partition in range(partitions):
                await self.tenants(traffic_class, partition)
        return len(self._streams) > before

    async def tenants(self, traffic_class: TrafficClass, partition: int) -> list[TenantStream]:
        """The class's tenants that gateways registered, the class's own stream first."""
        raw: dict[str, str] = await self._redis.hgetall(  # type: ignore[misc,assignment]
            keys.tenants_key(self._model, traffic_class, partition)
        )
        found = [TenantStream(traffic_class, partition, UNTENANTED, 1.0)] + [
            TenantStream(traffic_class, partition, tenant, float(weight))
            for tenant, weight in sorted(raw.items())
            if tenant
        ]
        for t in found:
            self._streams[self._name(t)] = t
        return found

    async def charge(self, messages: list[IntakeMessage]) -> list[IntakeMessage]:
        """Charge the tenants of messages a blocking read took (it bypassed the counters)."""
        out: list[IntakeMessage] = []
        by_stream: dict[tuple[TrafficClass, int], list[IntakeMessage]] = {}
        for m in messages:
            t = self._streams.get(m.message.stream)
            if t is None:
                out.append(m)
            else:
                by_stream.setdefault((t.traffic_class, t.partition), []).append(m)
        for (traffic_class, partition), group in by_stream.items():
            out += await self.read(traffic_class, partition, 0, group)
        return out

    async def read(
        self, traffic_class: TrafficClass, partition: int, count: int, already: Sequence[IntakeMessage] = ()
    ) -> list[IntakeMessage]:
        """Up to ``count`` new requests in tenant-share order; charges ``already`` (messages of this
        class and partition a blocking read took) first. Returns the new ones, ``already`` charged."""
        tenants = await self.tenants(traffic_class, partition)
        index = {self._name(t): i for i, t in enumerate(tenants, start=1)}
        charged = [m for m in already if m.message.stream in index]
        pairs = [str(v) for m in charged for v in (index[m.message.stream], m.cost or 1.0)]
        args: list[Any] = [keys.WORKER_GROUP, self._consumer, count, len(tenants)]
        args += [t.tenant for t in tenants] + [repr(t.weight) for t in tenants] + pairs
        streams = [self._name(t) for t in tenants]
        reply = await _FAIR_READ(self._redis, [self._counters(traffic_class, partition), self._busy(
            traffic_class, partition), *streams], args)
        for t, value in zip(tenants, reply[: len(tenants)], strict=True):
            self.counters[(traffic_class.value, t.tenant)] = float(value)
        taken = []
        for i, msg_id, data, cost in reply[len(tenants):]:
            stream = streams[int(i) - 1]
            message = IntakeMessage(HeldMessage(stream, msg_id), data or None, cost=float(cost))
            taken.append(self.with_charge(message))
        return [self.with_charge(m) for m in already] + taken  # none of ``already`` is dropped

    def with_charge(self, message: IntakeMessage) -> IntakeMessage:
        """``message`` with the charge its tenant paid for it, when it came from a tenant stream."""
        t = self._streams.get(message.message.stream)
        if t is None or message.cost is None:
            return message
        charge = Charge(self._counters(t.traffic_class, t.partition), t.tenant, t.weight, message.cost)
        return IntakeMessage(message.message, message.data, message.is_reclaimed, message.num_deliveries,
                             message.cost, charge)

    def _name(self, t: TenantStream) -> str:
        return keys.request_stream(self._model, t.traffic_class, t.partition, t.tenant)

    def _counters(self, traffic_class: TrafficClass, partition: int) -> str:
        return keys.virtual_tokens_key(self._model, traffic_class, partition)

    def _busy(self, traffic_class: TrafficClass, partition: int) -> str:
        return keys.busy_tenants_key(self._model, traffic_class, partition)
