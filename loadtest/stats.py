"""Summaries of one load level: throughput and latency percentiles, as plain JSON-ready dicts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loadtest.client import RequestResult

PERCENTILES = (50, 90, 99)
MAX_ERRORS_KEPT = 5


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize_ms(values_s: Sequence[float]) -> dict[str, float] | None:
    """Mean and percentiles in milliseconds, or None when nothing was measured."""
    if not values_s:
        return None
    ms = [1000 * v for v in values_s]
    summary = {"mean": round(sum(ms) / len(ms), 3)}
    for p in PERCENTILES:
        summary[f"p{p}"] = round(percentile(ms, p), 3)
    return summary


def summarize_level(load: float, results: Sequence[RequestResult], duration_s: float) -> dict[str, Any]:
    """Everything measured at one concurrency or rate."""
    ok = [r for r in results if r.ok]
    errors = [r.error for r in results if not r.ok]
    num_output_tokens = sum(r.num_output_tokens for r in ok)
    return {
        "load": load,
        "num_requests": len(results),
        "num_ok": len(ok),
        "num_errors": len(errors),
        "errors": errors[:MAX_ERRORS_KEPT],
        "duration_s": round(duration_s, 3),
        "req_per_s": round(len(ok) / duration_s, 4) if duration_s > 0 else 0.0,
        "output_tok_per_s": round(num_output_tokens / duration_s, 2) if duration_s > 0 else 0.0,
        "mean_prompt_tokens": round(sum(r.num_prompt_tokens for r in ok) / len(ok), 1) if ok else 0.0,
        "mean_output_tokens": round(num_output_tokens / len(ok), 1) if ok else 0.0,
        "ttft_ms": summarize_ms([r.ttft_s for r in ok]),
        "tpot_ms": summarize_ms([t for r in ok if (t := r.tpot_s) is not None]),
        "itl_ms": summarize_ms([gap for r in ok for gap in r.itl_s]),
        "e2e_ms": summarize_ms([r.e2e_s for r in ok]),
    }
