"""The one retry policy: transient Redis errors are retried with capped, jittered backoff until the
deadline; Redis's real answers are raised at once."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.retry import RetryPolicy


class Flaky:
    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


async def test_transient_errors_are_retried_until_the_call_succeeds() -> None:
    op = Flaky(
        [RedisTimeoutError("stalled"), RedisConnectionError("refused"), OSError("reset"), TimeoutError()]
    )
    assert await RetryPolicy(base_s=0.001, cap_s=0.01, deadline_s=5).run(op, "test") == "ok"
    assert op.calls == 5


async def test_the_last_transient_error_is_raised_after_the_deadline() -> None:
    op = Flaky([RedisTimeoutError(f"stalled {i}") for i in range(10_000)])
    with pytest.raises(RedisTimeoutError):
        await RetryPolicy(base_s=0.001, cap_s=0.005, deadline_s=0.05).run(op, "test")
    assert 2 <= op.calls < 10_000


async def test_an_answer_from_redis_is_not_retried() -> None:
    op = Flaky([ResponseError("NOGROUP")])
    with pytest.raises(ResponseError):
        await RetryPolicy(base_s=0.001).run(op, "test")
    assert op.calls == 1


def test_backoff_is_jittered_and_capped() -> None:
    policy = RetryPolicy(base_s=0.1, cap_s=1.0)
    delays = [policy.delay_s(attempt) for attempt in range(40) for _ in range(5)]
    assert all(0 <= d <= 1.0 for d in delays)
    assert len({round(d, 6) for d in delays}) > 100  # not in lockstep


@pytest.mark.parametrize("kwargs", [{"base_s": 0}, {"base_s": 2, "cap_s": 1}, {"deadline_s": -1}])
def test_bad_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)
