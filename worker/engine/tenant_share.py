"""Slot shares between tenants of one class, inside one engine.

Intake picks whose request a worker takes next by the tenants' virtual token counters
(``worker/service/fair_share.py``), but that only acts when a slot frees. A batch flood holds every
slot for as long as its outputs take (tens of seconds on a CPU), so a tenant that sends one request
now and then would wait behind it all, and a tenant that arrived second would stay below its share
until the first one's requests end. So a waiting sequence of a tenant may also take the slot of a
running sequence of the same class whose tenant holds more than its weighted share of this engine's
slots (preemption by recompute; its prefix-cached pages usually survive, so little is computed again).

The rule is weighted max-min: a waiting sequence of tenant t (weight w_t, r_t sequences running) may
preempt one of tenant u when ``r_u / w_u > (r_t + 1) / w_t``. It cannot be undone by the victim: after
it, u would need ``(r_t + 1) / w_t > r_u / w_u``, the opposite of what allowed it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from worker.engine.sequence import Sequence, SequenceStatus


@dataclass(frozen=True)
class TenantShare:
    """Whose share a sequence runs in: its tenant and the tenant's weight (from the keys file)."""

    tenant: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.weight <= 0:
            raise ValueError(f"a tenant's weight must be > 0, got {self.weight}")


def share_victim(seq: Sequence, running: Iterable[Sequence]) -> Sequence | None:
    """The running sequence ``seq`` may preempt for its tenant's share, or None: of the same priority,
    of the tenant furthest above its share (weighted running count), the latest arrival."""
    share = seq.share
    if share is None:
        return None
    peers = [s for s in running if s.priority == seq.priority and s.share is not None]
    counts: dict[str, int] = {}
    for s in peers:
        counts[s.share.tenant] = counts.get(s.share.tenant, 0) + 1  # type: ignore[union-attr]
    mine = (counts.get(share.tenant, 0) + 1) / share.weight

    def load(s: Sequence) -> float:
        return counts[s.share.tenant] / s.share.weight  # type: ignore[union-attr]

    above = [s for s in peers if s.share.tenant != share.tenant and load(s) > mine]  # type: ignore[union-attr]
    if not above:
        return None
    return max(above, key=lambda s: (load(s), s.arrival_time))


def order_by_share(candidates: list[Sequence], running: Iterable[Sequence]) -> list[Sequence]:
    """``candidates`` with the waiting sequences that have a tenant reordered within their priority:
    they keep the places they hold, refilled in order of the load their tenant would carry with them
    admitted (its running sequences, and its waiting ones before them, over its weight). A tenant
    below its share goes first, and tenants' waiting requests interleave by weight."""
    counts: dict[tuple[int, str], int] = {}
    for s in running:
        if s.share is not None:
            counts[s.priority, s.share.tenant] = counts.get((s.priority, s.share.tenant), 0) + 1
    places: dict[int, list[int]] = {}
    loads: dict[int, list[tuple[float, int, Sequence]]] = {}
    for i, s in enumerate(candidates):
        if s.share is None or s.status is not SequenceStatus.WAITING:
            continue
        key = (s.priority, s.share.tenant)
        counts[key] = counts.get(key, 0) + 1
        places.setdefault(s.priority, []).append(i)
        loads.setdefault(s.priority, []).append((counts[key] / s.share.weight, i, s))
    out = list(candidates)
    for priority, at in places.items():
        for i, (_, _, s) in zip(at, sorted(loads[priority], key=lambda t: (t[0], t[1])), strict=True):
            out[i] = s
    return out


def page_victim(running: list[Sequence]) -> Sequence:
    """Whom to preempt when pages run out: the lowest priority, then the tenant furthest above its
    share (untenanted sequences count as at no load), then the latest arrival. A tenant that just got
    its one slot is not the one to lose it to the others' growth."""
    counts: dict[tuple[int, str], int] = {}
    for s in running:
        if s.share is not None:
            counts[s.priority, s.share.tenant] = counts.get((s.priority, s.share.tenant), 0) + 1

    def load(s: Sequence) -> float:
        return 0.0 if s.share is None else counts[s.priority, s.share.tenant] / s.share.weight

    return max(running, key=lambda s: (s.priority, load(s), s.arrival_time))
