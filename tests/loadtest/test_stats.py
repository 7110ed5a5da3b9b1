"""Level summaries: percentiles as numpy computes them, errors counted, not averaged in."""

from __future__ import annotations

import pytest

from loadtest.client import RequestResult
from loadtest.stats import percentile, summarize_level


def test_percentile_interpolates_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 100) == 4.0
    assert percentile([5.0], 99) == 5.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary_of_a_level() -> None:
    results = [
        RequestResult(
            ok=True, ttft_s=0.1, e2e_s=1.1, itl_s=[0.1] * 10, num_prompt_tokens=20, num_output_tokens=11
        ),
        RequestResult(
            ok=True, ttft_s=0.3, e2e_s=0.7, itl_s=[0.2] * 2, num_prompt_tokens=10, num_output_tokens=3
        ),
        RequestResult(ok=False, error="HTTP 429: slow down"),
    ]
    level = summarize_level(4, results, duration_s=2.0)
    assert level["num_requests"] == 3
    assert level["num_ok"] == 2
    assert level["num_errors"] == 1
    assert level["errors"] == ["HTTP 429: slow down"]
    assert level["req_per_s"] == 1.0
    assert level["output_tok_per_s"] == 7.0
    assert level["mean_prompt_tokens"] == 15.0
    assert level["ttft_ms"] == {"mean": 200.0, "p50": 200.0, "p90": 280.0, "p99": 298.0}
    assert level["tpot_ms"]["p50"] == pytest.approx(150.0)  # (1000/10 + 400/2) / 2
    assert level["itl_ms"]["mean"] == pytest.approx(1400 / 12, abs=1e-3)


def test_summary_without_successes_has_no_latencies() -> None:
    level = summarize_level(1, [RequestResult(ok=False, error="boom")], duration_s=1.0)
    assert level["num_ok"] == 0
    assert level["ttft_ms"] is None
    assert level["output_tok_per_s"] == 0.0
