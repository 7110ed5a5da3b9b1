"""How long a step takes, as a function of what it carries: fitted online from measured steps.

A step's time is close to linear in the tokens it computes and the sequences it carries (a decode
step: one token per sequence; a prefill chunk: many tokens of one sequence)::

    seconds ~ base + per_token * num_tokens + per_seq * num_seqs

The three coefficients are a least-squares fit over the steps seen so far, older steps weighing less
(each new step multiplies the old ones' weight by ``decay``), so the model follows a machine whose
speed changes. No constant is tuned to a machine: until ``min_samples`` steps are seen it predicts
nothing, and its callers do not shape.
"""

from __future__ import annotations

from dataclasses import dataclass

# Ridge term that keeps the fit defined when the steps seen do not tell tokens from sequences apart
# (decode steps only: one token per sequence): each diagonal term grows by this fraction of itself.
_RIDGE = 1e-6


@dataclass(frozen=True)
class StepCost:
    base_s: float
    per_token_s: float
    per_seq_s: float

    def seconds(self, num_tokens: float, num_seqs: float) -> float:
        return self.base_s + self.per_token_s * num_tokens + self.per_seq_s * num_seqs

    def max_tokens_within(self, seconds: float, num_tokens: int, num_seqs: int) -> int:
        """How many more tokens a step of ``num_tokens``/``num_seqs`` may carry and stay within
        ``seconds`` (``num_seqs`` already counts the sequence they belong to)."""
        room = seconds - self.seconds(num_tokens, num_seqs)
        if room < 0:
            return 0
        if self.per_token_s <= 0:
            return 1 << 30
        return int(room / self.per_token_s + 1e-6)  # not one token short of an exact fit


class StepCostModel:
    """Weighted least squares over (1, tokens, seqs) -> seconds, updated after every step."""

    def __init__(self, decay: float = 0.98, min_samples: int = 16) -> None:
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        if min_samples < 3:
            raise ValueError(f"min_samples must be >= 3, got {min_samples}")
        self.decay = decay
        self.min_samples = min_samples
        self.num_samples = 0
        self._xx = [[0.0] * 3 for _ in range(3)]  # sum of w * x x^T
        self._xy = [0.0] * 3  # sum of w * x * seconds
        self._fit: StepCost | None = None
        self._is_stale = False

    def observe(self, num_tokens: int, num_seqs: int, seconds: float) -> None:
        if num_tokens <= 0 or num_seqs <= 0 or seconds <= 0:
            return
        x = (1.0, float(num_tokens), float(num_seqs))
        d = self.decay
        for i in range(3):
            self._xy[i] = d * self._xy[i] + x[i] * seconds
            row = self._xx[i]
            for j in range(3):
                row[j] = d * row[j] + x[i] * x[j]
        self.num_samples += 1
        self._is_stale = True

    def current(self) -> StepCost | None:
        """The fit of the steps seen so far; None until there are ``min_samples`` of them."""
        if self.num_samples < self.min_samples:
            return None
        if self._is_stale:
            self._fit = self._solve()
            self._is_stale = False
        return self._fit

    def _solve(self) -> StepCost | None:
        """Least squares with slopes kept >= 0: a slope that fits below zero (noise) is dropped."""
        free = [0, 1, 2]
        while True:
            coef = _solve_subset(self._xx, self._xy, free)
            if coef is None:
                return None
            negative = [i for i in free[1:] if coef[i] < 0]
            if not negative:
                return StepCost(max(coef[0], 0.0), coef[1], coef[2])
            free.remove(negative[0])


def _solve_subset(xx: list[list[float]], xy: list[float], free: list[int]) -> list[float] | None:
    """Solve the normal equations over the ``free`` coefficients (the others fixed at 0)."""
    n = len(free)
    a = [[xx[i][j] * (1 + _RIDGE if i == j else 1.0) for j in free] + [xy[i]] for i in free]
    for col in range(n):  # Gauss-Jordan with partial pivoting on an n <= 3 system
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < 1e-300:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(n):
            if r != col:
                f = a[r][col] / a[col][col]
                a[r] = [v - f * p for v, p in zip(a[r], a[col], strict=True)]
    coef = [0.0, 0.0, 0.0]
    for k, i in enumerate(free):
        coef[i] = a[k][n] / a[k][k]
    return coef
