"""SLO step shaping: while interactive work runs, lower classes get only what keeps the step in time."""

from __future__ import annotations

from tests.worker.test_scheduler import Clock, advance, plan, seq
from tests.worker.tiny_llama import make_engine, make_hf_model
from worker.engine.block_manager import BlockManager
from worker.engine.config import EngineConfig
from worker.engine.sampling_params import SamplingParams
from worker.engine.scheduler import Scheduler
from worker.engine.step_cost import StepCost
from worker.engine.step_shaping import SloTargets

INTERACTIVE, PRIORITY, BATCH = 0, 1, 2
# A machine whose step costs 30 ms plus 1 ms a token (the fit below recovers it exactly).
COST = StepCost(base_s=0.030, per_token_s=0.001, per_seq_s=0.0)
SLOWDOWN = 1.45
ROOM_BESIDE_4 = 13  # batch tokens beside 4 interactive decodes: 1.45 x (30 + 4 / 1.45) ms - 34 ms


DEFAULT = SloTargets(slowdown=SLOWDOWN)


def make(slo: SloTargets = DEFAULT, **config) -> tuple[Scheduler, Clock]:
    cfg = EngineConfig(page_size=4, num_pages=4096, max_num_seqs=128, slo=slo, **config)
    clock = Clock()
    sched = Scheduler(cfg, BlockManager(4096, 4, True), clock)
    assert sched.shaper is not None
    for n in range(1, 65):  # steps measured on the machine above: decodes, and prefill chunks
        sched.shaper.observe(n, n, COST.seconds(n, n))
        sched.shaper.observe(n + 100, n, COST.seconds(n + 100, n))
    return sched, clock


def running(sched: Scheduler, name: str, num: int, priority: int) -> list[str]:
    """``num`` sequences of ``priority`` past their prompt: each step is one decode token for each."""
    names = [f"{name}{i}" for i in range(num)]
    for n in names:
        sched.add(seq(n, 2, priority=priority, max_tokens=500))  # none finishes while the test runs
    while any(s.num_uncomputed_tokens > 1 for s in sched.running + sched.waiting):
        advance(sched, sched.schedule())
    return names


def test_lower_classes_get_what_keeps_the_interactive_step_within_its_slowdown() -> None:
    sched, _ = make()
    batch = running(sched, "b", 32, BATCH)
    chat = running(sched, "i", 4, INTERACTIVE)
    out = sched.schedule()
    scheduled = plan(out)
    assert all(scheduled.get(n) == 1 for n in chat)
    # 1.45 x the 4 interactive decodes as they would be alone (4 / 1.45 of them: 32.8 ms) = 47.5 ms:
    # room for 13 more tokens beside the 34 ms they take.
    assert sum(1 for n in batch if n in scheduled) == ROOM_BESIDE_4
    assert sched.num_held_back == 32 - ROOM_BESIDE_4
    alone = 4 / SLOWDOWN
    assert COST.seconds(out.num_batched_tokens, len(out.scheduled)) <= SLOWDOWN * COST.seconds(alone, alone)


def test_the_longest_waiting_batch_decodes_are_the_ones_that_run() -> None:
    sched, _ = make()
    batch = running(sched, "b", 20, BATCH)
    running(sched, "i", 4, INTERACTIVE)
    scheduled = plan(sched.schedule())
    assert [n for n in batch if n in scheduled] == batch[:ROOM_BESIDE_4]


def test_without_interactive_work_the_batch_takes_the_whole_step() -> None:
    sched, clock = make(SloTargets(quiet_s=2.0))
    batch = running(sched, "b", 32, BATCH)
    clock.now += 10
    assert len(plan(sched.schedule())) == 32
    assert sched.num_held_back == 0
    assert batch


def test_the_cap_stays_through_a_quiet_spell_and_lifts_after_it() -> None:
    sched, clock = make(SloTargets(slowdown=SLOWDOWN, quiet_s=2.0))
    running(sched, "b", 32, BATCH)
    chat = running(sched, "i", 4, INTERACTIVE)
    advance(sched, sched.schedule())
    for n in chat:  # the chat turns end
        sched.remove(next(s for s in sched.running if s.req_id == n))
    clock.now += 1.0
    # Within the quiet spell the last deadline holds: 47.5 ms is 17 batch tokens alone.
    assert len(plan(sched.schedule())) == ROOM_BESIDE_4 + 4
    clock.now += 1.5
    assert len(plan(sched.schedule())) == 32


def test_an_explicit_tpot_target_replaces_the_derived_one() -> None:
    sched, _ = make(SloTargets(tpot_s=(0.040, 0.0)))
    batch = running(sched, "b", 32, BATCH)
    running(sched, "i", 4, INTERACTIVE)
    scheduled = plan(sched.schedule())
    assert sum(1 for n in batch if n in scheduled) == 6  # 40 ms - 34 ms = 6 tokens


def test_a_step_with_an_interactive_prompt_chunks_the_batch_prompt_to_the_ttft_target() -> None:
    sched, _ = make(SloTargets(ttft_s=(0.100, 0.0)))
    sched.add(seq("batch-prompt", 200, priority=BATCH))
    sched.add(seq("chat-prompt", 40, priority=INTERACTIVE))
    scheduled = plan(sched.schedule())
    assert scheduled["chat-prompt"] == 40
    assert scheduled["batch-prompt"] == 100 - 30 - 40  # what is left of 100 ms at 1 ms a token


def test_the_priority_class_is_protected_from_batch_when_no_interactive_work_runs() -> None:
    sched, _ = make()
    batch = running(sched, "b", 32, BATCH)
    internal = running(sched, "p", 4, PRIORITY)
    scheduled = plan(sched.schedule())
    assert all(n in scheduled for n in internal)
    assert sum(1 for n in batch if n in scheduled) == ROOM_BESIDE_4


def test_priority_work_is_held_back_for_interactive_work_like_batch() -> None:
    sched, _ = make()
    batch = running(sched, "b", 16, BATCH)  # lower classes first: a higher class's prompts are let in at once
    internal = running(sched, "p", 16, PRIORITY)
    running(sched, "i", 4, INTERACTIVE)
    scheduled = plan(sched.schedule())
    assert sum(1 for n in internal if n in scheduled) == ROOM_BESIDE_4  # the higher lower class first
    assert not any(n in scheduled for n in batch)


def test_shaping_off_schedules_everything() -> None:
    cfg = EngineConfig(page_size=4, num_pages=512, max_num_seqs=128, slo=SloTargets(is_enabled=False))
    sched = Scheduler(cfg, BlockManager(512, 4, True), Clock())
    assert sched.shaper is None
    running(sched, "b", 32, BATCH)
    running(sched, "i", 4, INTERACTIVE)
    assert len(plan(sched.schedule())) == 36


def test_a_waiting_batch_request_is_not_admitted_while_the_step_has_no_room() -> None:
    sched, _ = make(SloTargets(tpot_s=(0.034, 0.0)))
    running(sched, "i", 4, INTERACTIVE)
    sched.add(seq("late-batch", 10, priority=BATCH))
    out = sched.schedule()
    assert "late-batch" not in plan(out)
    assert [s.req_id for s in sched.waiting] == ["late-batch"]


def test_after_interactive_work_batch_prompt_chunks_keep_to_a_bus_stop_and_decodes_all_run() -> None:
    """An interactive request that arrives next waits one short step, not a 2048-token prefill."""
    sched, clock = make()
    running(sched, "b", 1, BATCH)
    sched.add(seq("chat", 40, priority=INTERACTIVE))
    out = sched.schedule()  # the chat prompt's step: its deadline is 1.45 x (30 + 40) ms
    assert plan(out)["chat"] == 40
    advance(sched, out)
    sched.remove(next(s for s in sched.running if s.req_id == "chat"))
    clock.now += 10  # the chat user went quiet
    decodes = running(sched, "d", 10, BATCH)
    sched.add(seq("long-prompt", 1000, priority=BATCH))
    scheduled = plan(sched.schedule())
    assert all(scheduled[n] == 1 for n in ["b0", *decodes])  # every decode runs
    deadline = SLOWDOWN * COST.seconds(40, 1)  # the chat prompt's step
    assert abs(scheduled["long-prompt"] - COST.max_tokens_within(deadline, 11, 12)) <= 1  # 60 tokens
    assert sched.num_held_back == 0


def test_a_bus_stop_lets_prefill_progress_beside_a_step_of_decodes_longer_than_the_deadline() -> None:
    sched, clock = make()
    sched.add(seq("chat", 40, priority=INTERACTIVE))
    sched.add(seq("b-first", 2, priority=BATCH))
    advance(sched, sched.schedule())
    sched.remove(next(s for s in sched.running if s.req_id == "chat"))
    clock.now += 10
    running(sched, "d", 100, BATCH)
    sched.add(seq("long-prompt", 1000, priority=BATCH))
    scheduled = plan(sched.schedule())
    assert len(scheduled) == 102  # every decode and the prompt
    # 101 decodes cost 131 ms: the prompt may add 45% of that.
    expected = COST.max_tokens_within(SLOWDOWN * COST.seconds(101, 101), 101, 102)  # 58 tokens
    assert abs(scheduled["long-prompt"] - expected) <= 1


def test_a_bus_stop_follows_interactive_work_that_ran_alone() -> None:
    sched, clock = make()
    sched.add(seq("chat", 40, priority=INTERACTIVE))
    advance(sched, sched.schedule())  # no batch work at all: its deadline is remembered all the same
    sched.remove(next(s for s in sched.running if s.req_id == "chat"))
    clock.now += 10
    sched.add(seq("long-prompt", 1000, priority=BATCH))
    assert plan(sched.schedule())["long-prompt"] < 100


def test_an_engine_whose_held_back_work_was_aborted_holds_nothing_back() -> None:
    """A stale count would keep the worker's intake closed to every class while it sits idle."""
    engine = make_engine(make_hf_model(), slo=SloTargets(tpot_s=(0.0001, 0.0)))  # no room beside chat
    params = SamplingParams(max_tokens=50, ignore_eos=True)
    for i in range(2):
        engine.add_request(f"b{i}", [1, 2, 3], params, priority=BATCH)
    for _ in range(20):  # the batch decodes, and the step-cost model learns the machine
        engine.step()
    engine.add_request("chat", [4, 5, 6], params, priority=INTERACTIVE)
    engine.step()
    engine.step()
    assert engine.stats().num_held_back == 2
    for req_id in ("b0", "b1", "chat"):
        engine.abort(req_id)
    engine.step()
    assert engine.stats().num_held_back == 0
