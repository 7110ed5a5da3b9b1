"""Repeated runs of a benchmark, judged by their worst: each figure at its worst over the runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _largest_error(*values: float) -> float:
    return max(values, key=abs)


# The figures a run is judged by, and which of several values is the worst.
WORST_OF: dict[str, Callable[..., float]] = {
    "ttft_p99_ratio": max,
    "tpot_p50_ratio": max,
    "batch_throughput_ratio": min,
    "share_error": _largest_error,
    "sparse_ttft_ratio": max,
}


def worst(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Each judged figure at its worst over the runs (figures a run lacks are skipped)."""
    out: dict[str, Any] = {}
    for name, pick in WORST_OF.items():
        values = [r[name] for r in results if r.get(name) is not None]
        if values:
            out[name] = pick(*values)
    return out
