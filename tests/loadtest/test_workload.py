"""Length specs and prompts: parsed strictly, sampled within bounds, reproducible by seed."""

from __future__ import annotations

import random

import pytest

from loadtest.workload import PROMPT_PREFIX, LengthDist, Workload


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("fixed:64", LengthDist("fixed", 64)),
        ("uniform:16:256", LengthDist("uniform", 16, 256)),
        ("normal:128:32", LengthDist("normal", 128, 32)),
    ],
)
def test_parse_round_trips(spec: str, expected: LengthDist) -> None:
    assert LengthDist.parse(spec) == expected
    assert str(expected) == spec


@pytest.mark.parametrize(
    "spec",
    ["", "fixed", "fixed:0", "fixed:1:2", "uniform:10", "uniform:20:10", "normal:5:-1", "zipf:3", "fixed:x"],
)
def test_parse_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="bad length spec"):
        LengthDist.parse(spec)


def test_samples_stay_in_bounds() -> None:
    rng = random.Random(0)
    uniform = LengthDist.parse("uniform:16:32")
    assert {uniform.sample(rng) for _ in range(500)} <= set(range(16, 33))
    assert LengthDist.parse("fixed:7").sample(rng) == 7
    # A normal distribution far below 1 is clamped to the shortest valid length.
    assert min(LengthDist.parse("normal:1:50").sample(rng) for _ in range(200)) == 1


def test_workload_is_reproducible_and_follows_the_distributions() -> None:
    def draw(seed: int) -> list[tuple[str, int]]:
        workload = Workload(LengthDist.parse("uniform:4:8"), LengthDist.parse("uniform:10:20"), seed=seed)
        return [(spec.prompt, spec.max_tokens) for spec in (workload.next() for _ in range(20))]

    first = draw(1)
    assert first == draw(1)
    assert first != draw(2)
    for prompt, max_tokens in first:
        assert prompt.startswith(PROMPT_PREFIX)
        assert 4 <= len(prompt.removeprefix(PROMPT_PREFIX).split()) <= 8
        assert 10 <= max_tokens <= 20
