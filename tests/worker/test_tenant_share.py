"""Slot shares between tenants of one class inside the engine: a tenant below its weighted share of
the slots takes one from a tenant above it, never the other way round, and never across classes."""

from __future__ import annotations

from tests.worker.test_scheduler import advance, make, plan
from worker.engine.sampling_params import SamplingParams
from worker.engine.sequence import Sequence, SequenceStatus
from worker.engine.tenant_share import TenantShare, order_by_share, page_victim, share_victim

BATCH = 2


def tseq(req_id: str, tenant: str | None, weight: float = 1.0, priority: int = BATCH,
         arrival: float = 100.0, num_tokens: int = 4) -> Sequence:
    share = None if tenant is None else TenantShare(tenant, weight)
    return Sequence(req_id, list(range(1, num_tokens + 1)), SamplingParams(max_tokens=50), priority,
                    arrival, [], None, share=share)


def running(*seqs: Sequence) -> list[Sequence]:
    for s in seqs:
        s.status = SequenceStatus.RUNNING
    return list(seqs)


def test_a_tenant_with_no_slot_takes_the_latest_of_the_tenant_holding_them_all() -> None:
    sched, _, _ = make(max_num_seqs=3)
    for i in range(3):
        sched.add(tseq(f"flood-{i}", "flood", arrival=100.0 + i))
    advance(sched, sched.schedule())
    sched.add(tseq("sparse", "sparse", arrival=200.0))
    out = sched.schedule()
    assert out.preempted_req_ids == ["flood-2"]
    assert plan(out) == {"flood-0": 1, "flood-1": 1, "sparse": 4}


def test_weighted_shares_are_stable_and_a_victim_never_preempts_back() -> None:
    # 2 slots of weight 2 against 1 of weight 1: each tenant holds its share, nobody moves.
    heavy = running(tseq("h0", "heavy", 2), tseq("h1", "heavy", 2))
    light = running(tseq("l0", "light", 1))
    assert share_victim(tseq("h2", "heavy", 2), heavy + light) is None
    assert share_victim(tseq("l1", "light", 1), heavy + light) is None
    # 1 of weight 2 against 2 of weight 1: the heavy tenant may take one; then the light one may not
    # take it back.
    few = running(tseq("h0", "heavy", 2))
    many = running(tseq("l0", "light", 1, arrival=100.0), tseq("l1", "light", 1, arrival=101.0))
    victim = share_victim(tseq("h1", "heavy", 2), few + many)
    assert victim is not None and victim.req_id == "l1"
    after = few + running(tseq("h1", "heavy", 2)) + many[:1]
    assert share_victim(tseq("l1", "light", 1), after) is None


def test_shares_never_cross_classes_or_touch_untenanted_requests() -> None:
    interactive = running(tseq("chat-0", "web", priority=0), tseq("chat-1", "web", priority=0))
    assert share_victim(tseq("b", "evals"), interactive) is None
    untenanted = running(tseq("u0", None), tseq("u1", None))
    assert share_victim(tseq("b", "evals"), untenanted) is None
    assert share_victim(tseq("u2", None), running(tseq("e0", "evals"), tseq("e1", "evals"))) is None


def test_a_tenant_below_its_share_gets_in_behind_a_waiting_request_that_does_not_fit() -> None:
    sched, _, _ = make(max_num_seqs=2)
    for i in range(3):
        sched.add(tseq(f"flood-{i}", "flood", arrival=100.0 + i))
    advance(sched, sched.schedule())
    assert [s.req_id for s in sched.waiting] == ["flood-2"]
    sched.add(tseq("sparse", "sparse", arrival=200.0))
    out = sched.schedule()
    assert "sparse" in plan(out)
    assert out.preempted_req_ids == ["flood-1"]
    assert {s.req_id for s in sched.waiting} == {"flood-1", "flood-2"}


def test_waiting_requests_of_a_class_interleave_by_their_tenants_load_and_keep_other_places() -> None:
    chat = tseq("chat", None, priority=0)
    heavy = [tseq(f"h{i}", "heavy", 2, arrival=100.0 + i) for i in range(4)]
    light = [tseq(f"l{i}", "light", 1, arrival=110.0 + i) for i in range(2)]
    sparse = tseq("s0", "sparse", 1, arrival=120.0)
    held = running(tseq("r0", "light", 1))  # light already holds a slot
    order = [s.req_id for s in order_by_share([chat, *heavy, *light, sparse], held)]
    assert order == ["chat", "h0", "h1", "s0", "h2", "h3", "l0", "l1"]  # loads .5 1 1 1.5 2 2 3


def test_out_of_pages_the_tenant_furthest_above_its_share_loses_a_sequence_first() -> None:
    flood = [tseq(f"f{i}", "flood", arrival=100.0 + i) for i in range(3)]
    sparse = tseq("s0", "sparse", arrival=200.0)  # the latest arrival, but its tenant's only slot
    chat = tseq("chat", None, priority=0, arrival=300.0)
    assert page_victim(running(chat, *flood, sparse)).req_id == "f2"
    assert page_victim(running(chat, sparse)).req_id == "s0"  # the lowest priority first
