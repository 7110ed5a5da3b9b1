"""How much new work a worker reads from Redis, and of which classes: the engine's room, seen from intake.

A worker reads only what its engine can start soon, so that what it cannot run stays in Redis for
workers that can. Three cases:

1. room (free slots and pages), no queue in the engine, nothing held back: up to the room, any class;
2. room, but the engine holds lower-class sequences back to keep a higher class's latency target
   (step shaping): up to the room, only classes above the lowest work it holds. More batch work would
   only wait here;
3. no room (or a queue): only classes above the lowest work it holds, as many as there are
   lower-class requests for them to preempt (less those already waiting for one).
"""

from __future__ import annotations

from collections.abc import Collection

from shared.messages import CLASS_RANK, TrafficClass
from worker.engine.outputs import Capacity, EngineStats
from worker.service.intake import CLASS_ORDER


def plan_intake(
    capacity: Capacity,
    stats: EngineStats,
    priorities: Collection[int],
    num_submitted: int,
    max_batch: int,
) -> tuple[int, tuple[TrafficClass, ...]]:
    """(how many requests to read, of which classes); ``priorities`` are those of the active requests,
    ``num_submitted`` those handed to the engine and not yet admitted."""
    # Each request needs at least one page; the engine queues those that do not fit at once.
    room = min(capacity.num_free_seqs, capacity.num_free_pages) - num_submitted
    has_room = room > 0 and stats.num_waiting == 0
    if has_room and (stats.num_held_back == 0 or not priorities):  # holding nothing: held back nothing
        return min(room, max_batch), CLASS_ORDER
    lowest = max(priorities, default=0)
    classes = tuple(tc for tc in CLASS_ORDER if CLASS_RANK[tc] < lowest)
    if not classes:
        return 0, ()
    if has_room:  # lower classes held back
        return min(room, max_batch), classes
    num_lower = sum(1 for p in priorities if p == lowest)
    return max(0, min(num_lower - stats.num_waiting, max_batch) - num_submitted), classes
