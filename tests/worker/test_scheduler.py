"""Scheduler: token budget, chunked prefill, priorities with aging, preemption by recompute."""

from __future__ import annotations

from worker.engine.block_manager import BlockManager
from worker.engine.config import EngineConfig
from worker.engine.sampling_params import SamplingParams
from worker.engine.scheduler import Scheduler, SchedulerOutput
from worker.engine.sequence import Sequence, SequenceStatus


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(num_pages: int = 32, page_size: int = 4, **config) -> tuple[Scheduler, BlockManager, Clock]:
    cfg = EngineConfig(page_size=page_size, num_pages=num_pages, **config)
    bm = BlockManager(num_pages, page_size, cfg.enable_prefix_caching)
    clock = Clock()
    return Scheduler(cfg, bm, clock), bm, clock


def seq(req_id: str, num_tokens: int, priority: int = 0, arrival: float = 100.0, **params) -> Sequence:
    tokens = list(range(1, num_tokens + 1))
    return Sequence(req_id, tokens, SamplingParams(**params), priority, arrival, [], None)


def plan(out: SchedulerOutput) -> dict[str, int]:
    return {s.seq.req_id: s.num_new_tokens for s in out.scheduled}


def advance(sched: Scheduler, out: SchedulerOutput, token: int = 7) -> list[Sequence]:
    """Apply a step in which every sampling sequence got `token`."""
    return sched.update_from_output(out, [token if s.is_sampling else None for s in out.scheduled],
                                    frozenset({0}))


def test_decodes_first_then_chunked_prefill_within_the_budget() -> None:
    sched, _, _ = make(max_num_batched_tokens=6)
    sched.add(seq("a", 3))
    out = sched.schedule()
    assert plan(out) == {"a": 3}
    advance(sched, out)
    sched.add(seq("b", 10))
    out = sched.schedule()
    assert plan(out) == {"a": 1, "b": 5}
    assert [s.is_sampling for s in out.scheduled] == [True, False]
    advance(sched, out)
    out = sched.schedule()
    assert plan(out) == {"a": 1, "b": 5}
    assert [s.is_sampling for s in out.scheduled] == [True, True]


def test_sequence_cap_leaves_the_rest_waiting() -> None:
    sched, _, _ = make(max_num_seqs=2)
    for name in "abc":
        sched.add(seq(name, 4))
    assert plan(sched.schedule()) == {"a": 4, "b": 4}
    assert [s.req_id for s in sched.waiting] == ["c"]


def test_waiting_order_is_priority_then_arrival_with_aging() -> None:
    sched, _, _ = make(max_num_seqs=1, aging_s=10.0)
    sched.add(seq("batch-old", 4, priority=2, arrival=95.0))
    sched.add(seq("interactive-new", 4, priority=0, arrival=100.0))
    sched.add(seq("interactive-old", 4, priority=0, arrival=99.0))
    assert plan(sched.schedule()) == {"interactive-old": 4}

    # 35 s of waiting in the engine is worth 3.5 levels: the batch request now goes before a fresh
    # interactive one.
    sched2, _, clock2 = make(max_num_seqs=1, aging_s=10.0)
    clock2.now = 65.0
    sched2.add(seq("batch-old", 4, priority=2, arrival=65.0))
    clock2.now = 100.0
    sched2.add(seq("interactive-new", 4, priority=0, arrival=100.0))
    assert plan(sched2.schedule()) == {"batch-old": 4}


def test_aging_counts_waiting_in_the_engine_not_the_time_since_arrival() -> None:
    # A batch request that spent 60 s in Redis before this engine took it has not waited here.
    sched, _, _ = make(max_num_seqs=1, aging_s=10.0)
    sched.add(seq("batch-queued-long", 4, priority=2, arrival=40.0))
    sched.add(seq("interactive", 4, priority=0, arrival=100.0))
    assert plan(sched.schedule()) == {"interactive": 4}


def test_a_running_batch_request_that_never_waited_is_preempted_for_interactive() -> None:
    sched, _, clock = make(max_num_seqs=1, aging_s=10.0)
    sched.add(seq("batch", 4, priority=2, arrival=100.0))
    advance(sched, sched.schedule())
    clock.now = 160.0  # running for a minute earns no aging credit
    sched.add(seq("chat", 4, priority=0, arrival=160.0))
    out = sched.schedule()
    assert plan(out) == {"chat": 4}
    assert out.preempted_req_ids == ["batch"]


def test_page_shortage_preempts_lowest_priority_latest_arrival() -> None:
    sched, bm, _ = make(num_pages=3, page_size=4)
    sched.add(seq("hi", 4, priority=0, arrival=1.0))
    sched.add(seq("lo-early", 4, priority=1, arrival=2.0))
    sched.add(seq("lo-late", 4, priority=1, arrival=3.0))
    out = sched.schedule()
    assert plan(out) == {"hi": 4, "lo-early": 4, "lo-late": 4}
    advance(sched, out)  # each now has 5 tokens: every decode needs a second page, none is free
    out = sched.schedule()
    assert plan(out) == {"hi": 1}
    assert out.preempted_req_ids == ["lo-late", "lo-early"]
    assert sched.num_preemptions == 2
    victim = next(s for s in sched.waiting if s.req_id == "lo-late")
    assert victim.status is SequenceStatus.WAITING
    assert victim.num_computed_tokens == 0 and victim.page_ids == []
    assert victim.num_tokens == 5  # the sampled token is kept and recomputed
    assert bm.num_free_pages == 1


def test_waiting_higher_priority_preempts_running_lower_priority() -> None:
    sched, _, _ = make(max_num_seqs=1)
    sched.add(seq("batch", 4, priority=2, arrival=1.0))
    advance(sched, sched.schedule())
    sched.add(seq("same", 4, priority=2, arrival=2.0))
    assert plan(sched.schedule()) == {"batch": 1}  # equal priority never preempts
    sched.add(seq("chat", 4, priority=0, arrival=3.0))
    out = sched.schedule()
    assert plan(out) == {"chat": 4}
    assert out.preempted_req_ids == ["batch"]


def test_priority_preemption_frees_pages_for_the_higher_priority_prompt() -> None:
    sched, bm, _ = make(num_pages=2, page_size=4, enable_prefix_caching=False)
    sched.add(seq("batch", 6, priority=2))
    advance(sched, sched.schedule())
    assert bm.num_free_pages == 0
    sched.add(seq("chat", 6, priority=0))
    out = sched.schedule()
    assert plan(out) == {"chat": 6}
    assert out.preempted_req_ids == ["batch"]


def test_prefix_hit_is_counted_and_skips_computed_tokens() -> None:
    sched, _, _ = make(page_size=4)
    sched.add(seq("a", 9))
    advance(sched, sched.schedule())
    sched.add(seq("b", 10))
    out = sched.schedule()
    assert plan(out) == {"a": 1, "b": 2}
    b = out.scheduled[1].seq
    assert b.num_cached_tokens == 8
    assert (sched.prefix_cache_queries, sched.prefix_cache_hits) == (19, 8)


def test_finishing_by_stop_token_eos_and_length() -> None:
    sched, bm, _ = make()
    sched.add(seq("stop", 3, stop_token_ids=(7,)))
    sched.add(seq("eos", 3))
    sched.add(seq("eos-ignored", 3, ignore_eos=True, max_tokens=2))
    out = sched.schedule()
    tokens = {"stop": 7, "eos": 0, "eos-ignored": 0}
    finished = sched.update_from_output(out, [tokens[s.seq.req_id] for s in out.scheduled], frozenset({0}))
    reasons = {s.req_id: s.finish_reason for s in finished}
    assert reasons == {"stop": "stop", "eos": "stop", "eos-ignored": None}
    assert [s.req_id for s in sched.running] == ["eos-ignored"]
    out = sched.schedule()
    (last,) = sched.update_from_output(out, [0], frozenset({0}))
    assert last.finish_reason == "length"
    assert not sched.has_unfinished() and bm.num_free_pages == bm.num_total_pages


def test_remove_frees_pages_of_running_and_waiting() -> None:
    sched, bm, _ = make(max_num_seqs=1)
    a, b = seq("a", 9), seq("b", 4)
    sched.add(a)
    sched.add(b)
    sched.schedule()
    sched.remove(a)
    sched.remove(b)
    assert not sched.has_unfinished()
    assert bm.num_free_pages == bm.num_total_pages


def test_waiting_interactive_prompt_goes_before_a_running_batch_prompts_next_chunk() -> None:
    sched, _, _ = make(max_num_batched_tokens=8, enable_prefix_caching=False)
    sched.add(seq("batch", 30, priority=2, arrival=99.0))
    advance(sched, sched.schedule())  # first chunk of 8
    sched.add(seq("chat", 6, priority=0, arrival=100.0))
    out = sched.schedule()
    assert plan(out) == {"chat": 6, "batch": 2}
    assert out.preempted_req_ids == []


def test_a_batch_prompt_chunk_never_preempts_a_just_admitted_interactive_request() -> None:
    sched, _, _ = make(num_pages=4, page_size=4, max_num_batched_tokens=8, enable_prefix_caching=False)
    sched.add(seq("batch", 20, priority=2, arrival=99.0))
    advance(sched, sched.schedule())  # 8 tokens, 2 pages
    sched.add(seq("chat", 6, priority=0, arrival=100.0))
    out = sched.schedule()  # chat takes the last 2 pages; batch's next chunk must wait, not evict chat
    assert plan(out) == {"chat": 6}
    assert "chat" not in out.preempted_req_ids


def test_a_waiting_request_that_does_not_fit_never_stalls_a_running_prompts_chunks() -> None:
    sched, _, clock = make(max_num_seqs=1, max_num_batched_tokens=8, aging_s=10.0,
                           enable_prefix_caching=False)
    sched.add(seq("long", 30))
    advance(sched, sched.schedule())  # first chunk of 8
    sched.add(seq("queued", 4))
    clock.now += 5.0  # "queued" has waited longer than "long": it sorts first, yet no slot is free
    out = sched.schedule()
    assert plan(out) == {"long": 8}
    assert [s.req_id for s in sched.waiting] == ["queued"]
