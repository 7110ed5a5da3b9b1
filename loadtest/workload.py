"""What the load tools send: prompts and output lengths drawn from seeded distributions.

Lengths are given as small specs on the command line (``fixed:64``, ``uniform:16:256``,
``normal:128:32``) so a run can be described in one line and repeated exactly with the same seed.
Prompt lengths count words; with the Llama-family tokenizers busstop serves, one of these words is
about one token.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Common English words that tokenize to about one token each, so a prompt's length in words is close
# to its length in tokens on every server being compared.
_WORD_TEXT = (
    "the model serves requests from a queue and each step adds new tokens to the batch while "
    "the cache keeps pages of keys and values for every sequence so the next token comes fast "
    "when many users ask at once the scheduler picks who runs first and who waits for memory"
)
WORDS = tuple(_WORD_TEXT.split())

PROMPT_PREFIX = "Continue this text: "


@dataclass(frozen=True)
class LengthDist:
    """A distribution of positive integer lengths, parsed from ``kind:arg[:arg]``."""

    kind: str
    a: float
    b: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> LengthDist:
        kind, _, rest = spec.partition(":")
        try:
            args = [float(x) for x in rest.split(":")] if rest else []
        except ValueError:
            raise ValueError(f"bad length spec {spec!r}: arguments must be numbers") from None
        arity = {"fixed": 1, "uniform": 2, "normal": 2}
        if kind not in arity:
            raise ValueError(f"bad length spec {spec!r}: kind must be one of {sorted(arity)}")
        if len(args) != arity[kind]:
            raise ValueError(f"bad length spec {spec!r}: {kind} takes {arity[kind]} argument(s)")
        dist = cls(kind, *args)
        if dist.a < 1 or (kind == "uniform" and dist.b < dist.a) or (kind == "normal" and dist.b < 0):
            raise ValueError(f"bad length spec {spec!r}: lengths must be >= 1 and ranges ordered")
        return dist

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            value = self.a
        elif self.kind == "uniform":
            value = rng.uniform(self.a, self.b)
        else:
            value = rng.gauss(self.a, self.b)
        return max(1, round(value))

    def __str__(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{self.a:g}"
        return f"{self.kind}:{self.a:g}:{self.b:g}"


@dataclass(frozen=True)
class RequestSpec:
    prompt: str
    max_tokens: int


def make_prompt(rng: random.Random, num_words: int) -> str:
    return PROMPT_PREFIX + " ".join(rng.choice(WORDS) for _ in range(num_words))


class Workload:
    """An endless, reproducible sequence of requests."""

    def __init__(self, prompt_len: LengthDist, output_len: LengthDist, seed: int = 0) -> None:
        self.prompt_len = prompt_len
        self.output_len = output_len
        self._rng = random.Random(seed)

    def next(self) -> RequestSpec:
        prompt = make_prompt(self._rng, self.prompt_len.sample(self._rng))
        return RequestSpec(prompt=prompt, max_tokens=self.output_len.sample(self._rng))
