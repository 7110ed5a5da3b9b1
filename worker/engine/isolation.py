"""Running a step that failed again without its culprit, so one bad request never stops the engine.

A failed ``ModelRunner.execute`` leaves the scheduler's state as it was before the step (pages are
allocated, but no sequence has advanced and no page was hashed), so any subset of the step can be run
again as it is. First the step runs without the sequences added since the last good step; if that
passes, only those newcomers are suspects. Each suspect then runs alone: one that fails alone is a
culprit, and every sequence that passed keeps its token. Seeded sequences get their generator state
back before each retry, so a retry draws the same token the first try would have.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from worker.engine.outputs import TokenLogprobs
from worker.engine.runner import ModelRunner, RunnerOutput
from worker.engine.scheduler import ScheduledSeq, SchedulerOutput
from worker.engine.sequence import Sequence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IsolatedStep:
    """The sequences of a step that ran, their runner output in that order, and the culprits."""

    ran: SchedulerOutput
    output: RunnerOutput
    failed: list[tuple[Sequence, str]]  # (sequence, why it failed)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


class StepIsolator:
    """Runs steps through ``runner``; on a failure, finds the sequences that fail on their own."""

    def __init__(self, runner: ModelRunner) -> None:
        self._runner = runner

    def execute(self, scheduled: SchedulerOutput, newcomers: set[str]) -> IsolatedStep:
        generators = _GeneratorStates(scheduled.scheduled)
        try:
            return IsolatedStep(scheduled, self._runner.execute(scheduled), [])
        except Exception as exc:  # noqa: BLE001 - any failure of a step is isolated, then judged
            first_error = describe(exc)
        items = scheduled.scheduled
        suspects = [i for i in items if i.seq.req_id in newcomers]
        rest = [i for i in items if i.seq.req_id not in newcomers]
        passed: list[tuple[ScheduledSeq, int | None, TokenLogprobs | None]] = []
        generators.restore(rest)
        if suspects and rest and self._try(rest, passed):
            items = suspects
        failed: list[tuple[Sequence, str]] = []
        for item in items:
            generators.restore([item])
            self._try([item], passed, failed)
        log.error("isolated the failed step (%s): %d sequences failed alone, %d ran",
                  first_error, len(failed), len(passed))
        ran = [item for item, _, _ in passed]
        output = RunnerOutput([token for _, token, _ in passed], [lp for _, _, lp in passed])
        return IsolatedStep(SchedulerOutput(ran, sum(i.num_new_tokens for i in ran), []), output, failed)

    def _try(
        self,
        items: list[ScheduledSeq],
        passed: list[tuple[ScheduledSeq, int | None, TokenLogprobs | None]],
        failed: list[tuple[Sequence, str]] | None = None,
    ) -> bool:
        """Run ``items`` as one step; on success add their results to ``passed``."""
        try:
            out = self._runner.execute(SchedulerOutput(items, sum(i.num_new_tokens for i in items), []))
        except Exception as exc:  # noqa: BLE001
            if failed is not None:
                failed.extend((item.seq, describe(exc)) for item in items)
            return False
        passed.extend(zip(items, out.sampled_token_ids, out.logprobs, strict=True))
        return True


class _GeneratorStates:
    """The RNG states of a step's seeded sequences, taken before the first try."""

    def __init__(self, items: list[ScheduledSeq]) -> None:
        self._states: dict[str, torch.Tensor] = {
            i.seq.req_id: i.seq.generator.get_state() for i in items if i.seq.generator is not None
        }

    def restore(self, items: list[ScheduledSeq]) -> None:
        """Put back the states of ``items``' generators (the others may have moved on since)."""
        for item in items:
            state = self._states.get(item.seq.req_id)
            if state is not None and item.seq.generator is not None:
                item.seq.generator.set_state(state)
