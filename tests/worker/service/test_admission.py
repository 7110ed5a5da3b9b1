"""How much a worker reads, and of which classes, from its engine's room and what it holds back."""

from __future__ import annotations

from shared.messages import TrafficClass
from worker.engine.outputs import Capacity, EngineStats
from worker.service.admission import CLASS_ORDER, plan_intake

INTERACTIVE, BATCH = 0, 2
ABOVE_BATCH = (TrafficClass.INTERACTIVE, TrafficClass.PRIORITY)
ROOM = Capacity(num_free_seqs=20, num_free_pages=500, page_size=16)


def test_room_and_nothing_held_back_reads_every_class_up_to_the_room() -> None:
    assert plan_intake(ROOM, EngineStats(), [BATCH] * 4, 2, 32) == (18, CLASS_ORDER)
    assert plan_intake(ROOM, EngineStats(), [], 0, 8) == (8, CLASS_ORDER)


def test_held_back_batch_reads_only_higher_classes_but_up_to_the_room() -> None:
    """More interactive requests run than batch ones: they still board while the room lasts."""
    held = EngineStats(num_held_back=5)
    active = [INTERACTIVE] * 30 + [BATCH] * 10
    assert plan_intake(ROOM, held, active, 0, 32) == (20, ABOVE_BATCH)


def test_a_full_engine_takes_as_many_higher_requests_as_it_has_lower_ones_to_preempt() -> None:
    full = Capacity(num_free_seqs=0, num_free_pages=0, page_size=16)
    # Interactive requests already running do not count: each new one preempts a batch sequence.
    assert plan_intake(full, EngineStats(), [BATCH] * 6 + [INTERACTIVE] * 20, 1, 32) == (5, ABOVE_BATCH)
    # Those already waiting in the engine will take a batch sequence's place first.
    queued = EngineStats(num_waiting=2)
    assert plan_intake(ROOM, queued, [BATCH] * 3 + [INTERACTIVE] * 5, 0, 32) == (1, ABOVE_BATCH)
    assert plan_intake(full, EngineStats(num_waiting=3), [BATCH] * 3, 0, 32) == (0, ABOVE_BATCH)


def test_a_worker_that_holds_nothing_reads_every_class_whatever_the_last_step_held_back() -> None:
    assert plan_intake(ROOM, EngineStats(num_held_back=3), [], 0, 32) == (20, CLASS_ORDER)


def test_an_engine_with_only_interactive_work_and_a_queue_reads_nothing() -> None:
    assert plan_intake(ROOM, EngineStats(num_waiting=3), [INTERACTIVE] * 4, 0, 32) == (0, ())
