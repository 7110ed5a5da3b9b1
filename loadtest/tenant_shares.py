"""Fair shares between internal tenants: two tenants flood, a third sends now and then.

    python -m loadtest.priority_mix --scenario tenants --url http://127.0.0.1:8000 --model smollm2 \\
        --tenant-keys KEY_A,KEY_B --tenant-weights 2,1 --sparse-key KEY_C

Two phases. First the sparse tenant alone on an idle server (``--idle-requests``, one every
``--sparse-interval`` seconds): its idle TTFT. Then both flood tenants (``--batch-concurrency``
batch-class streams each, enough to keep the server's slots contended) for ``--duration`` seconds,
while the sparse tenant goes on sending. It reports each flood's output tokens in the phase, their
ratio against the ratio of their weights, and the sparse tenant's TTFT p50 idle and under the floods.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx

from loadtest.client import RequestResult, run_request
from loadtest.priority_mix import TRAFFIC_CLASS_HEADER, MixConfig, request_flood
from loadtest.stats import summarize_ms
from loadtest.workload import Workload


@dataclass(frozen=True)
class TenantConfig:
    mix: MixConfig  # url, model, duration, flood concurrency (per tenant), lengths
    flood_keys: tuple[str, str]
    weights: tuple[float, float]  # the flood tenants' weights in the gateway's keys file
    sparse_key: str
    sparse_interval_s: float = 5.0
    idle_requests: int = 5

    def __post_init__(self) -> None:
        if min(self.weights) <= 0 or self.sparse_interval_s <= 0 or self.idle_requests < 1:
            raise ValueError("weights, the sparse interval and the idle requests must be positive")


async def sparse_load(
    client: httpx.AsyncClient, config: TenantConfig, stop_at: float, max_requests: int | None = None
) -> list[RequestResult]:
    """One batch-class request every ``sparse_interval_s`` until ``stop_at`` (or ``max_requests``)."""
    mix = config.mix
    workload = Workload(mix.interactive_prompt_len, mix.interactive_output_len, mix.seed + 2)
    tasks: list[asyncio.Task[RequestResult]] = []
    while time.perf_counter() < stop_at and (max_requests is None or len(tasks) < max_requests):
        request = run_request(
            client, mix.url, mix.model, workload.next(), api_key=config.sparse_key,
            extra_headers={TRAFFIC_CLASS_HEADER: "batch"},
        )
        tasks.append(asyncio.create_task(request))
        await asyncio.sleep(config.sparse_interval_s)
    return list(await asyncio.gather(*tasks))


def _ttft_p50(results: list[RequestResult]) -> float | None:
    summary = summarize_ms([r.ttft_s for r in results if r.ok])
    return summary["p50"] if summary else None


async def run_tenants(config: TenantConfig, log: bool = True) -> dict[str, Any]:
    mix = config.mix
    limits = httpx.Limits(max_connections=2 * mix.batch_concurrency + 64)
    async with httpx.AsyncClient(timeout=mix.timeout_s, limits=limits) as client:
        far = time.perf_counter() + 3600
        idle = await sparse_load(client, config, far, max_requests=config.idle_requests)
        if log:
            print(f"sparse tenant idle: TTFT p50 {_ttft_p50(idle)} ms", file=sys.stderr)
        start = time.perf_counter()
        stop_at = start + mix.duration_s
        floods = [
            request_flood(client, dataclasses.replace(mix, batch_key=key), start, stop_at)
            for key in config.flood_keys
        ]
        *flooded, sparse = await asyncio.gather(*floods, sparse_load(client, config, stop_at))
    tokens = [f["output_tokens"] for f in flooded]
    ratio = tokens[0] / tokens[1] if tokens[1] else None
    expected = config.weights[0] / config.weights[1]
    idle_p50, flooded_p50 = _ttft_p50(idle), _ttft_p50(sparse)
    return {
        "scenario": "tenants",
        "url": mix.url,
        "duration_s": mix.duration_s,
        "batch_concurrency_per_tenant": mix.batch_concurrency,
        "weights": list(config.weights),
        "flood_output_tokens": tokens,
        "share_ratio": None if ratio is None else round(ratio, 3),
        "expected_ratio": round(expected, 3),
        # The goal: within +-10% of the weights' ratio.
        "share_error": None if ratio is None else round(ratio / expected - 1, 3),
        "sparse_ttft_p50_ms": {"idle": idle_p50, "flooded": flooded_p50},
        # The goal: <= 1.5.
        "sparse_ttft_ratio": round(flooded_p50 / idle_p50, 3) if idle_p50 and flooded_p50 else None,
        "sparse_errors": [r.error for r in idle + sparse if not r.ok][:5],
        "floods": flooded,
    }
