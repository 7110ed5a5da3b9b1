"""Fair shares between tenants of an internal class: whose request a worker takes next.

Each internal request waits on its tenant's stream (``shared/keys.py``). A worker that has room takes
the next one with ``fair_read.lua``: the tenant with queued work and the lowest virtual token counter
(tokens served divided by weight, VTC: "Fairness in Serving Large Language Models", OSDI '24) goes
first, and is charged the request's expected cost. The counters live in Redis, so every worker picks
from the same ones and the shares hold across the pool. When the request ends, the worker settles the
difference between what it was charged and the tokens it took (``Charge.settlement``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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

    def streams_of(self, partition: int, traffic_class: TrafficClass, tenants: frozenset[str]) -> list[str]:
        """The streams of ``tenants`` in ``traffic_class`` and ``partition`` (the class's own stream
        for the untenanted, "")."""
        return [
            name for name, s in self._streams.items()
            if s.partition == partition and s.traffic_class is traffic_class and s.tenant in tenants
        ]

    def below_share(
        self, traffic_class: TrafficClass, active: Iterable[tuple[str, float]], num_slots: int
    ) -> frozenset[str]:
        """The known tenants of ``traffic_class`` below their weighted share of the worker's
        ``num_slots``, counting its ``active`` (tenant, weight) requests of the class: one more request
        of theirs would find a running one of a tenant above its share to preempt (the engine's rule,
        ``worker/engine/tenant_share.py``), and would not take them past their share. A full worker
        reads their requests anyway, when the counters pick them next."""
        counts: dict[str, int] = {}
        weights: dict[str, float] = {}
        for tenant, weight in active:
            counts[tenant] = counts.get(tenant, 0) + 1
            weights[tenant] = weight
        highest = max((n / weights[t] for t, n in counts.items()), default=0.0)
        total_weight = sum(weights.values())

        def is_below(s: TenantStream) -> bool:
            n = counts.get(s.tenant, 0)
            share = num_slots * s.weight / (total_weight + (0.0 if s.tenant in counts else s.weight))
            return (n + 1) / s.weight < highest and n + 1 <= share

        return frozenset(s.tenant for s in self._streams.values()
                         if s.traffic_class is traffic_class and is_below(s))

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
        self, traffic_class: TrafficClass, partition: int, count: int, already: Sequence[IntakeMessage] = (),
        only: frozenset[str] | None = None,
    ) -> list[IntakeMessage]:
        """Up to ``count`` new requests in tenant-share order (of the tenants in ``only``, if given);
        charges ``already`` (messages of this class and partition a blocking read took) first. Returns
        the new ones, ``already`` charged."""
        tenants = await self.tenants(traffic_class, partition)
        index = {self._name(t): i for i, t in enumerate(tenants, start=1)}
        charged = [m for m in already if m.message.stream in index]
        pairs = [str(v) for m in charged for v in (index[m.message.stream], m.cost or 1.0)]
        takeable = ["1" if only is None or t.tenant in only else "0" for t in tenants]
        args: list[Any] = [keys.WORKER_GROUP, self._consumer, count, len(tenants)]
        args += [t.tenant for t in tenants] + [repr(t.weight) for t in tenants] + takeable + pairs
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
