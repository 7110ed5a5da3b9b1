"""Iteration-level scheduling: who runs this step and how many tokens each gets.

The scheduler never touches tensors. Each step, within a token budget and a sequence cap:

1. decodes: every running sequence whose next step is one token, in (priority, arrival) order;
2. prompt chunks: unfinished prompts of running sequences and waiting sequences together, ordered by
   priority minus an aging bonus, then arrival, so a fresh interactive prompt is not stuck behind a
   long batch prompt's chunks. A prompt that does not fit the remaining budget is chunked.

Aging counts only time spent waiting in this engine, one priority level per ``aging_s``: a request
that sat in Redis before a worker took it has not been passed over by this scheduler. The credit a
sequence earned while waiting stays with it while it runs and after a preemption.

When pages run out a running sequence is preempted by recompute (its pages freed, its tokens
prefilled again later): the victim is the lowest priority, then the tenant furthest above its share,
then the latest arrival, possibly the sequence itself. A waiting request may also preempt running
requests of a strictly lower priority (larger number) unless aging has already lifted them above it,
so aging cannot be undone by a stream of fresh high-priority arrivals, and a preempted request can
never preempt its preemptor back. Within a class, a waiting request whose tenant holds less than its
weighted share of the slots may preempt one of a tenant above its share, and waiting requests of one
class are admitted in order of their tenants' load (``tenant_share.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from worker.engine.block_manager import BlockManager
from worker.engine.config import EngineConfig
from worker.engine.constraint import ConstraintError, TokenConstraint
from worker.engine.sequence import Sequence, SequenceStatus
from worker.engine.step_shaping import StepBudget, StepShaper
from worker.engine.tenant_share import order_by_share, page_victim, share_victim


@dataclass(frozen=True)
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int  # tokens computed this step, starting at seq.num_computed_tokens

    @property
    def is_sampling(self) -> bool:
        """After this chunk every known token has K/V, so the step samples the next token."""
        return self.seq.num_computed_tokens + self.num_new_tokens == self.seq.num_tokens


@dataclass(frozen=True)
class SchedulerOutput:
    scheduled: list[ScheduledSeq]
    num_batched_tokens: int
    preempted_req_ids: list[str]


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.block_manager = block_manager
        self.clock = clock
        self.shaper = StepShaper(config.slo, clock=clock) if config.slo.is_enabled else None
        self.num_held_back = 0  # lower-class sequences the last step left out to keep an SLO
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        seq.waiting_since = self.clock()
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Drop a sequence wherever it is and free its pages (abort)."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def _waiting_key(self, now: float) -> Callable[[Sequence], tuple[float, float]]:
        """(aged priority, arrival): lower goes first."""
        aging_s = self.config.aging_s

        def key(s: Sequence) -> tuple[float, float]:
            waited = s.waited_s
            if s.status is SequenceStatus.WAITING:
                waited += max(0.0, now - s.waiting_since)
            return s.priority - waited / aging_s, s.arrival_time

        return key

    def schedule(self) -> SchedulerOutput:
        step = _Step(self)
        self.running.sort(key=lambda s: (s.priority, s.arrival_time))
        key = self._waiting_key(self.clock())
        slo = self.shaper.budget([*self.running, *self.waiting]) if self.shaper is not None else None
        if slo is None or not slo.caps_decodes:
            self._fill(step, key, lambda s: True, slo)
        else:  # the protected classes first, then lower classes within the step's deadline
            rank = slo.protected_rank
            self._fill(step, key, lambda s: s.priority <= rank)
            num_decodes = sum(1 for s in step.scheduled.values() if s.num_new_tokens == 1)
            slo.close_protected(step.num_tokens, len(step.scheduled), num_decodes)
            self._fill(step, key, lambda s: s.priority > rank, slo)
            self.shaper.finish(slo)  # type: ignore[union-attr]
        self.num_held_back = len(step.held_back)
        batch = list(step.scheduled.values())
        return SchedulerOutput(batch, sum(s.num_new_tokens for s in batch), step.preempted)

    def _fill(self, step: _Step, key: Callable[[Sequence], tuple[float, float]],
              include: Callable[[Sequence], bool], slo: StepBudget | None = None) -> None:
        """Schedule the ``include``d sequences: decodes, then prompt chunks; within ``slo`` if given."""
        for seq in list(self.running):
            if step.budget <= 0:
                break
            if seq.status is SequenceStatus.RUNNING and seq.num_uncomputed_tokens == 1 and include(seq):
                if step.limit(seq, slo) < 1:
                    step.held_back.add(seq.req_id)
                    continue
                step.grow_running(seq)

        candidates = order_by_share(sorted(
            [s for s in self.running if include(s) and s.req_id not in step.scheduled
             and s.req_id not in step.held_back]
            + [s for s in self.waiting if include(s) and s.req_id not in step.preempted], key=key),
            self.running)
        is_admitting = True  # once a waiting sequence does not fit, none after it is admitted
        for seq in candidates:
            if step.budget <= 0:
                break
            if seq.req_id in step.preempted:
                continue
            limit = step.limit(seq, slo)
            if seq.status is SequenceStatus.RUNNING:
                if limit < 1:
                    step.held_back.add(seq.req_id)
                elif not step.grow_running(seq, limit):
                    break  # out of pages even after preempting
            elif is_admitting:
                # Running sequences further down still get their prompt chunks: they hold their slot.
                is_admitting = limit >= 1 and step.admit(seq, key, limit)
            elif limit >= 1 and share_victim(seq, self.running) is not None:
                step.admit(seq, key, limit)  # its tenant is below its share: it takes a slot from above

    def _admit(self, seq: Sequence, page_ids: list[int], hashes: list[int]) -> None:
        self.block_manager.take_prefix(seq, page_ids, hashes)
        if seq.is_first_admission:
            seq.num_cached_tokens = seq.num_computed_tokens
            seq.is_first_admission = False
            self.prefix_cache_queries += seq.num_tokens
            self.prefix_cache_hits += seq.num_computed_tokens
        self.waiting.remove(seq)
        self.running.append(seq)
        seq.status = SequenceStatus.RUNNING
        seq.waited_s += max(0.0, self.clock() - seq.waiting_since)

    def update_from_output(self, output: SchedulerOutput, sampled_token_ids: list[int | None],
                           eos_token_ids: frozenset[int]) -> list[Sequence]:
        """Advance each scheduled sequence; returns those that got a token, finishing where due.

        sampled_token_ids[i] is the token sampled for output.scheduled[i], None for a prompt chunk
        that does not reach the end of the known tokens.
        """
        bm = self.block_manager
        advanced: list[Sequence] = []
        for item, token in zip(output.scheduled, sampled_token_ids, strict=True):
            seq = item.seq
            seq.num_computed_tokens += item.num_new_tokens
            bm.cache_full_pages(seq)
            if token is None:
                continue
            seq.token_ids.append(token)
            advanced.append(seq)
            params = seq.params
            if token in params.stop_token_ids or (token in eos_token_ids and not params.ignore_eos):
                seq.finish_reason = "stop"
            elif seq.constraint is not None and _advance(seq, seq.constraint, token):
                pass  # the grammar ended the request, or refused the token
            elif seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= self.config.max_model_len:
                seq.finish_reason = "length"
            if seq.finish_reason is not None:
                bm.free(seq)
                seq.status = SequenceStatus.FINISHED
        if any(s.status is SequenceStatus.FINISHED for s in advanced):
            self.running = [s for s in self.running if s.status is SequenceStatus.RUNNING]
        return advanced


def _advance(seq: Sequence, constraint: TokenConstraint, token: int) -> bool:
    """Feed ``token`` to the sequence's constraint; True when that finishes the sequence."""
    try:
        constraint.advance(token)
    except ConstraintError as exc:
        seq.finish_reason, seq.error = "error", f"structured output failed: {exc}"
        return True
    if constraint.is_finished:
        seq.finish_reason = "stop"
    return seq.finish_reason is not None


class _Step:
    """One schedule() call's working state: the budget left, what is scheduled, who was preempted."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.bm = scheduler.block_manager
        self.budget = scheduler.config.max_num_batched_tokens
        self.scheduled: dict[str, ScheduledSeq] = {}
        self.preempted: list[str] = []
        self.held_back: set[str] = set()  # running, left out to keep the step within its SLO
        self.num_tokens = 0

    def limit(self, seq: Sequence, slo: StepBudget | None) -> int:
        """How many of seq's uncomputed tokens this step may take: the token budget, and the SLO's."""
        wanted = min(seq.num_uncomputed_tokens, self.budget)
        if slo is None:
            return wanted
        if not slo.caps_decodes:  # a bus stop: decodes all run, prompt chunks are bounded
            if seq.status is SequenceStatus.RUNNING and seq.num_uncomputed_tokens == 1:
                return wanted
            slo.open_bus_stop(self.num_tokens, len(self.scheduled))
        return slo.num_lower_tokens(self.num_tokens, len(self.scheduled), wanted)

    def _schedule(self, seq: Sequence, num_tokens: int) -> None:
        self.bm.allocate(seq, seq.num_computed_tokens + num_tokens)
        self.scheduled[seq.req_id] = ScheduledSeq(seq, num_tokens)
        self.budget -= num_tokens
        self.num_tokens += num_tokens

    def preempt(self, victim: Sequence) -> None:
        """Preempt by recompute: free the pages, back to waiting with all tokens still to compute."""
        sched = self.scheduler
        sched.running.remove(victim)
        done = self.scheduled.pop(victim.req_id, None)
        if done is not None:
            self.budget += done.num_new_tokens
            self.num_tokens -= done.num_new_tokens
        self.bm.free(victim)
        victim.num_computed_tokens = 0
        victim.status = SequenceStatus.WAITING
        victim.waiting_since = sched.clock()
        sched.waiting.append(victim)
        sched.num_preemptions += 1
        self.preempted.append(victim.req_id)

    def grow_running(self, seq: Sequence, limit: int | None = None) -> bool:
        """Schedule a running sequence's next tokens (at most ``limit``), preempting the lowest-priority,
        latest running sequence while pages are short; False if that was seq itself."""
        cap = self.budget if limit is None else limit
        n = min(seq.num_uncomputed_tokens, self.budget, cap)
        running = self.scheduler.running
        while self.bm.num_new_pages_needed(seq, seq.num_computed_tokens + n) > self.bm.num_free_pages:
            victim = page_victim(running)
            self.preempt(victim)
            if victim is seq:
                return False
            n = min(seq.num_uncomputed_tokens, self.budget, cap)
        self._schedule(seq, n)
        return True

    def admit(self, seq: Sequence, key: Callable[[Sequence], tuple[float, float]], limit: int) -> bool:
        """Admit a waiting sequence (with its prefix-cache hit, and at most ``limit`` new tokens) if a
        slot and pages can be found, preempting lower-priority running sequences if needed; False if
        it does not fit."""
        sched, bm = self.scheduler, self.bm
        if len(sched.running) >= sched.config.max_num_seqs and not self._preempt_lower(seq, key):
            return False
        page_ids, hashes = bm.match_prefix(seq.token_ids)
        num_hit_tokens = len(page_ids) * bm.page_size
        while True:
            n = min(seq.num_tokens - num_hit_tokens, self.budget, limit)
            needed = bm.num_pages_for(num_hit_tokens + n) - len(page_ids) + bm.num_free_among(page_ids)
            if needed <= bm.num_free_pages:
                break
            if not self._preempt_lower(seq, key):
                return False
        sched._admit(seq, page_ids, hashes)
        self._schedule(seq, n)
        return True

    def _preempt_lower(self, seq: Sequence, key: Callable[[Sequence], tuple[float, float]]) -> bool:
        """Preempt the lowest-priority, latest running sequence below seq both by priority and by
        aged priority, else one of seq's class whose tenant is above its share; False if none."""
        running = self.scheduler.running
        victims = [s for s in running if s.priority > seq.priority and key(s) > key(seq)]
        victim = max(victims, key=lambda s: (s.priority, s.arrival_time)) if victims else None
        victim = victim or share_victim(seq, running)
        if victim is None:
            return False
        self.preempt(victim)
        return True
