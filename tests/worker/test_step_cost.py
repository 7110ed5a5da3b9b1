"""The online step-cost model: a least-squares fit of step time over tokens and sequences."""

from __future__ import annotations

import random

import pytest

from worker.engine.step_cost import StepCost, StepCostModel


def feed(model: StepCostModel, cost: StepCost, num_steps: int, seed: int = 0, noise: float = 0.0) -> None:
    rng = random.Random(seed)
    for _ in range(num_steps):
        num_seqs = rng.randint(1, 64)
        num_tokens = num_seqs + (rng.choice([0, 0, 0, rng.randint(16, 512)]))  # decodes, some prefill
        seconds = cost.seconds(num_tokens, num_seqs) * (1 + rng.uniform(-noise, noise))
        model.observe(num_tokens, num_seqs, seconds)


def test_no_prediction_before_enough_steps() -> None:
    model = StepCostModel(min_samples=16)
    feed(model, StepCost(0.03, 0.001, 0.0005), 15)
    assert model.current() is None
    feed(model, StepCost(0.03, 0.001, 0.0005), 1)
    assert model.current() is not None


def test_recovers_the_coefficients_of_a_linear_step_cost() -> None:
    truth = StepCost(base_s=0.030, per_token_s=0.0004, per_seq_s=0.0011)
    model = StepCostModel()
    feed(model, truth, 200)
    fit = model.current()
    assert fit is not None
    assert fit.base_s == pytest.approx(truth.base_s, rel=1e-3)
    assert fit.per_token_s == pytest.approx(truth.per_token_s, rel=1e-3)
    assert fit.per_seq_s == pytest.approx(truth.per_seq_s, rel=1e-3)


def test_noisy_steps_still_predict_within_a_few_percent() -> None:
    truth = StepCost(0.030, 0.0004, 0.0011)
    model = StepCostModel()
    feed(model, truth, 400, noise=0.2)
    fit = model.current()
    assert fit is not None
    for num_tokens, num_seqs in ((1, 1), (16, 16), (64, 64), (300, 8)):
        expected = truth.seconds(num_tokens, num_seqs)
        assert fit.seconds(num_tokens, num_seqs) == pytest.approx(expected, rel=0.1)


def test_follows_a_machine_that_slows_down() -> None:
    model = StepCostModel(decay=0.95)
    feed(model, StepCost(0.030, 0.0004, 0.0011), 200)
    slower = StepCost(0.060, 0.0008, 0.0022)
    feed(model, slower, 200, seed=1)
    fit = model.current()
    assert fit is not None
    assert fit.seconds(32, 32) == pytest.approx(slower.seconds(32, 32), rel=0.02)


def test_decode_only_steps_predict_decodes_and_keep_slopes_non_negative() -> None:
    """Decode steps alone cannot tell tokens from sequences: the split is arbitrary, the sum is not."""
    model = StepCostModel()
    for n in list(range(1, 65)) * 3:
        model.observe(n, n, 0.030 + 0.0015 * n)
    fit = model.current()
    assert fit is not None
    assert fit.per_token_s >= 0 and fit.per_seq_s >= 0
    assert fit.seconds(40, 40) == pytest.approx(0.030 + 0.0015 * 40, rel=1e-3)


def test_a_slope_that_fits_below_zero_is_dropped() -> None:
    model = StepCostModel()
    rng = random.Random(3)
    for _ in range(100):  # time grows with tokens only, and sequences are noise that correlates badly
        num_seqs, num_tokens = rng.randint(1, 64), rng.randint(1, 512)
        model.observe(num_tokens, num_seqs, 0.02 + 0.001 * num_tokens - 0.0001 * num_seqs)
    fit = model.current()
    assert fit is not None
    assert fit.per_seq_s == 0.0
    assert fit.per_token_s > 0


def test_room_in_tokens_within_a_deadline() -> None:
    cost = StepCost(0.030, 0.001, 0.0)
    assert cost.max_tokens_within(0.0476, 4, 5) == 13
    assert cost.max_tokens_within(0.030, 4, 5) == 0
