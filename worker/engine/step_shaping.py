"""SLO-aware step shaping: while a latency-bound class has work, lower classes get only what fits.

On a CPU, and on a GPU once the batch is large, a step costs more as it carries more. Admission by
priority alone cannot keep an interactive answer's time per output token (TPOT): every step it rides
also carries the batch. So while sequences of a class with latency targets (interactive, then
priority) run or wait, each step first takes that class's work (and any higher class's), and then
lower classes' decodes and prompt chunks only while the step's predicted time stays within the
target. The prediction is ``StepCostModel``'s, fitted from this engine's own steps.

A target is either set (``SloTargets``) or derived: ``slowdown`` times the predicted time of the
protected work alone, so "1.4" reads "an interactive token may take at most 1.4x as long as it would
with no batch work beside it", on any machine. A step that carries a protected prompt chunk is held
to the TTFT target instead, a decode-only one to the TPOT target. The cap stays for ``quiet_s`` after
the protected class's last sequence leaves (a chat user's next turn comes within seconds); after that
no decode is held back (the scheduler stays work-conserving: lower classes keep every slot and token
the targets leave over), and only prompt chunks keep to a bus stop (``StepShaper.budget``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from worker.engine.sequence import Sequence
from worker.engine.step_cost import StepCost, StepCostModel


@dataclass(frozen=True)
class SloTargets:
    """Per class rank (0 interactive, 1 priority; batch has none): seconds, 0 = derived."""

    tpot_s: tuple[float, ...] = (0.0, 0.0)
    ttft_s: tuple[float, ...] = (0.0, 0.0)
    slowdown: float = 1.4
    quiet_s: float = 2.0
    is_enabled: bool = True

    def __post_init__(self) -> None:
        if len(self.tpot_s) != len(self.ttft_s):
            raise ValueError("tpot_s and ttft_s need one target per class")
        if any(t < 0 for t in (*self.tpot_s, *self.ttft_s)):
            raise ValueError("latency targets must be >= 0 (0: derived from the step cost)")
        if self.slowdown < 1:
            raise ValueError(f"slowdown must be >= 1, got {self.slowdown}")
        if self.quiet_s < 0:
            raise ValueError(f"quiet_s must be >= 0, got {self.quiet_s}")

    @property
    def num_protected_ranks(self) -> int:
        return len(self.tpot_s) if self.is_enabled else 0


@dataclass
class StepBudget:
    """One step's shaping: the rank it protects, and how long the step may take once that rank's
    work is in. ``deadline_s`` is None until ``close_protected`` set it."""

    protected_rank: int
    cost: StepCost
    targets: SloTargets
    fallback_s: float | None  # the last deadline, for a step with no protected work (quiet period)
    deadline_s: float | None = None
    caps_decodes: bool = True  # False: only prompt chunks are held to the deadline (a bus stop)
    has_prompt: bool = False  # the protected work carried a prompt chunk

    def close_protected(self, num_tokens: int, num_seqs: int, num_decodes: int) -> float:
        """The protected work is scheduled (``num_decodes`` of its sequences decode, the others carry
        prompt chunks): fix the step's deadline from it.

        The derived deadline is ``slowdown`` times the protected work *as it would be alone*. Requests
        that arrive at their own pace (a chat user) stay in the engine as long as their tokens take,
        so a class slowed down s times holds about s times the decoding sequences it would hold alone
        (Little's law). Costing the work as it is now would let each slowdown raise the next deadline,
        and the class's TPOT would drift far past ``slowdown``; its decodes count 1/s each instead.
        """
        self.has_prompt = num_decodes < num_seqs
        rank, t = self.protected_rank, self.targets
        explicit = (t.ttft_s if self.has_prompt else t.tpot_s)[rank]
        if explicit > 0:
            self.deadline_s = explicit
        elif num_seqs > 0:
            alone = num_decodes / t.slowdown - num_decodes
            self.deadline_s = t.slowdown * self.cost.seconds(num_tokens + alone, num_seqs + alone)
        else:
            self.deadline_s = self.fallback_s or t.slowdown * self.cost.seconds(1, 1)
        return self.deadline_s

    def open_bus_stop(self, num_tokens: int, num_seqs: int) -> None:
        """Every decode is in (a step without protected work): prompt chunks may take the step to the
        class's last TTFT-bound deadline, or to ``slowdown`` times the decodes alone if that is longer
        (so prefill always progresses)."""
        if self.deadline_s is None:
            decodes = self.targets.slowdown * self.cost.seconds(num_tokens, num_seqs)
            self.deadline_s = max(self.fallback_s or 0.0, decodes)

    def num_lower_tokens(self, num_tokens: int, num_seqs: int, wanted: int) -> int:
        """Of ``wanted`` tokens of one more lower-class sequence, how many fit the deadline."""
        assert self.deadline_s is not None
        return min(wanted, self.cost.max_tokens_within(self.deadline_s, num_tokens, num_seqs + 1))


class StepShaper:
    """Keeps the cost model and the quiet-period memory; hands each step its ``StepBudget``."""

    def __init__(self, targets: SloTargets, cost_model: StepCostModel | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.targets = targets
        self.cost_model = cost_model or StepCostModel()
        self.clock = clock
        self._last_seen: dict[int, float] = {}  # protected rank -> when it last had work
        self._last_deadline: dict[int, float] = {}
        self._last_prompt_deadline: dict[int, float] = {}  # of steps that carried its prompt chunks

    def budget(self, seqs: Iterable[Sequence]) -> StepBudget | None:
        """The shaping of the next step over ``seqs`` (running and waiting); None: no cap.

        With no protected work, once a latency-bound class has been served, prompt chunks are still
        kept within its last TTFT-bound deadline (decodes all run): a request of that class that
        arrives meanwhile waits one such step, not a whole budget of prefill (seconds on a CPU)."""
        num_ranks = self.targets.num_protected_ranks
        if num_ranks == 0:
            return None
        cost = self.cost_model.current()
        if cost is None:
            return None
        now = self.clock()
        ranks = {s.priority for s in seqs}
        if not ranks:
            return None
        for rank in ranks:
            if rank < num_ranks:
                self._last_seen[rank] = now
        recent = [r for r, at in self._last_seen.items() if now - at <= self.targets.quiet_s]
        protected = min(recent, default=None)
        if protected is None:
            return self._bus_stop(cost)
        # Also with nothing below it: the step's deadline is remembered for the bus stops that follow.
        return StepBudget(protected, cost, self.targets, self._last_deadline.get(protected))

    def _bus_stop(self, cost: StepCost) -> StepBudget | None:
        if not self._last_prompt_deadline:
            return None  # no latency-bound class served yet: nothing to keep a stop for
        rank = min(self._last_prompt_deadline)
        deadline = self._last_prompt_deadline[rank]
        return StepBudget(rank, cost, self.targets, deadline, caps_decodes=False)

    def finish(self, budget: StepBudget) -> None:
        if budget.deadline_s is not None and budget.caps_decodes:
            self._last_deadline[budget.protected_rank] = budget.deadline_s
            if budget.has_prompt:
                self._last_prompt_deadline[budget.protected_rank] = budget.deadline_s

    def observe(self, num_tokens: int, num_seqs: int, seconds: float) -> None:
        self.cost_model.observe(num_tokens, num_seqs, seconds)
