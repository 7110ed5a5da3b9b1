"""Iteration-level scheduling: who runs this step and how many tokens each gets.

The scheduler never touches tensors. Each step: running sequences first (decodes and unfinished
prompt chunks, in (priority, arrival) order), then waiting ones by (priority minus an aging bonus,
arrival), all within a token budget and a sequence cap; a prompt that does not fit the remaining
budget is chunked. When pages run out a running sequence is preempted by recompute (its pages freed,
its tokens prefilled again later): the victim is the lowest priority, then the latest arrival.
A waiting request may also preempt running requests of a strictly lower priority (larger number)
unless aging has already lifted them above it, so aging cannot be undone by a stream of fresh
high-priority arrivals, and a preempted request can never preempt its preemptor back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from worker.engine.block_manager import BlockManager
from worker.engine.config import EngineConfig
from worker.engine.sequence import Sequence, SequenceStatus


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
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
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
        aging_s = self.config.aging_s
        return lambda s: (s.priority - max(0.0, now - s.arrival_time) / aging_s, s.arrival_time)

    def schedule(self) -> SchedulerOutput:
        bm = self.block_manager
        budget = self.config.max_num_batched_tokens
        scheduled: dict[str, ScheduledSeq] = {}
        preempted: list[str] = []

        def preempt(victim: Sequence) -> None:
            self.running.remove(victim)
            done = scheduled.pop(victim.req_id, None)
            if done is not None:
                nonlocal budget
                budget += done.num_new_tokens
            bm.free(victim)
            victim.num_computed_tokens = 0
            victim.status = SequenceStatus.WAITING
            self.waiting.append(victim)
            self.num_preemptions += 1
            preempted.append(victim.req_id)

        # 1. Running sequences; on a page shortage preempt from the back (lowest priority, latest).
        self.running.sort(key=lambda s: (s.priority, s.arrival_time))
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_uncomputed_tokens, budget)
            while bm.num_new_pages_needed(seq, seq.num_computed_tokens + n) > bm.num_free_pages:
                preempt(self.running[-1])
                if seq.status is not SequenceStatus.RUNNING:
                    break
            if seq.status is not SequenceStatus.RUNNING:
                break
            bm.allocate(seq, seq.num_computed_tokens + n)
            scheduled[seq.req_id] = ScheduledSeq(seq, n)
            budget -= n
            i += 1

        # 2. Waiting sequences, admitted in order until one does not fit.
        key = self._waiting_key(self.clock())
        candidates = sorted((s for s in self.waiting if s.req_id not in preempted), key=key)
        for seq in candidates:
            if budget <= 0:
                break
            if len(self.running) >= self.config.max_num_seqs and not self._preempt_lower(seq, preempt, key):
                break
            page_ids, hashes = bm.match_prefix(seq.token_ids)
            while True:
                n = min(seq.num_tokens - len(page_ids) * bm.page_size, budget)
                needed = (bm.num_pages_for(len(page_ids) * bm.page_size + n) - len(page_ids)
                          + bm.num_free_among(page_ids))
                if needed <= bm.num_free_pages or not self._preempt_lower(seq, preempt, key):
                    break
            if needed > bm.num_free_pages or n <= 0:
                break
            self._admit(seq, page_ids, hashes)
            bm.allocate(seq, seq.num_computed_tokens + n)
            scheduled[seq.req_id] = ScheduledSeq(seq, n)
            budget -= n

        batch = list(scheduled.values())
        return SchedulerOutput(batch, sum(s.num_new_tokens for s in batch), preempted)

    def _preempt_lower(self, seq: Sequence, preempt: Callable[[Sequence], None],
                       key: Callable[[Sequence], tuple[float, float]]) -> bool:
        """Preempt the lowest-priority, latest running sequence below seq both by priority and by
        aged priority; False if there is none."""
        victims = [s for s in self.running if s.priority > seq.priority and key(s) > key(seq)]
        if not victims:
            return False
        preempt(max(victims, key=lambda s: (s.priority, s.arrival_time)))
        return True

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
            elif seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= self.config.max_model_len:
                seq.finish_reason = "length"
            if seq.finish_reason is not None:
                bm.free(seq)
                seq.status = SequenceStatus.FINISHED
        if any(s.status is SequenceStatus.FINISHED for s in advanced):
            self.running = [s for s in self.running if s.status is SequenceStatus.RUNNING]
        return advanced
