"""Interactive chat under a batch flood: does the interactive class keep its latency, and the batch
its throughput?

    python -m loadtest.priority_mix --url http://127.0.0.1:8000 --model smollm2 \\
        --interactive-key PUBLIC_KEY --batch-key INTERNAL_KEY -o results/priority_mix_busstop.json
    python -m loadtest.priority_mix --url http://127.0.0.1:8100 --model smollm2 --target vllm \\
        -o results/priority_mix_vllm.json

Three phases of ``--duration`` seconds each: interactive chat alone (Poisson arrivals at ``--rate``
per second, streamed), the batch flood alone, then both at once. It reports the interactive TTFT
percentiles alone and under the flood, the flood's output tokens/s alone and mixed, and the two
ratios the goal is stated in (TTFT p99 mixed / alone, batch tokens/s mixed / alone).

The flood is ``--batch-concurrency`` streams always in flight (``--flood requests``), sent in the
batch class: on busstop with an internal key and the ``x-busstop-traffic-class: batch`` header
(interactive requests use a public key, the interactive class); on vLLM (started with
``--scheduling-policy priority``) with ``"priority": 10`` against the interactive requests' 0.
On busstop ``--flood batch-api`` instead runs one Batch API job large enough to outlast the phase,
and counts its completed lines (outputs are exactly ``--batch-output-len`` tokens, ``ignore_eos``);
its concurrency is then the gateway's ``BUSSTOP_BATCH_WINDOW`` (32), not ``--batch-concurrency``.

The request flood's throughput counts output tokens as they stream in during the phase; the Batch
API flood's counts lines completed inside the phase, so there a phase should last many times one
line (the default 60 s against 128-token outputs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from loadtest.client import RequestResult, run_request
from loadtest.repeat import WORST_OF, worst
from loadtest.stats import summarize_ms
from loadtest.workload import LengthDist, Workload

TRAFFIC_CLASS_HEADER = "x-busstop-traffic-class"
VLLM_BATCH_PRIORITY = 10  # vLLM: lower runs sooner; interactive requests keep the default 0
BATCH_API_POLL_S = 0.5


@dataclass(frozen=True)
class MixConfig:
    url: str
    model: str
    target: str  # "busstop" | "vllm"
    flood: str  # "requests" | "batch-api"
    rate: float  # interactive requests per second
    duration_s: float
    batch_concurrency: int
    interactive_prompt_len: LengthDist
    interactive_output_len: LengthDist
    batch_prompt_len: LengthDist
    batch_output_len: int
    interactive_key: str | None
    batch_key: str | None
    seed: int = 0
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.target not in ("busstop", "vllm"):
            raise ValueError(f"target must be busstop or vllm, got {self.target!r}")
        if self.flood not in ("requests", "batch-api"):
            raise ValueError(f"flood must be requests or batch-api, got {self.flood!r}")
        if self.flood == "batch-api" and self.target != "busstop":
            raise ValueError("--flood batch-api needs --target busstop")
        if self.rate <= 0 or self.duration_s <= 0 or self.batch_concurrency < 1 or self.batch_output_len < 1:
            raise ValueError("rate, duration, batch concurrency and batch output length must be positive")


def _batch_extra(config: MixConfig) -> tuple[dict[str, object], dict[str, str]]:
    """Body fields and headers that put a flood request in the batch class."""
    if config.target == "vllm":
        return {"priority": VLLM_BATCH_PRIORITY}, {}
    return {}, {TRAFFIC_CLASS_HEADER: "batch"}


async def interactive_load(
    client: httpx.AsyncClient, config: MixConfig, stop_at: float
) -> list[RequestResult]:
    """Open loop: Poisson arrivals at ``rate`` until ``stop_at``; waits for the requests it started."""
    rng = random.Random(config.seed)
    workload = Workload(config.interactive_prompt_len, config.interactive_output_len, config.seed)
    tasks: list[asyncio.Task[RequestResult]] = []
    while time.perf_counter() < stop_at:
        spec = workload.next()
        tasks.append(
            asyncio.create_task(
                run_request(client, config.url, config.model, spec, api_key=config.interactive_key)
            )
        )
        await asyncio.sleep(rng.expovariate(config.rate))
    return list(await asyncio.gather(*tasks))


async def request_flood(
    client: httpx.AsyncClient, config: MixConfig, start: float, stop_at: float
) -> dict[str, Any]:
    """Closed loop of batch-class streams; output tokens/s counted as they arrive inside the phase.

    Counting streamed tokens, not finished requests, keeps the figure exact when the flood's requests
    finish in waves that a phase boundary would cut."""
    body, headers = _batch_extra(config)
    workload = Workload(
        config.batch_prompt_len, LengthDist("fixed", config.batch_output_len), config.seed + 1
    )
    num_finished = 0
    num_tokens = 0
    errors: list[str] = []

    def count_token() -> None:
        nonlocal num_tokens
        num_tokens += 1

    async def loop() -> None:
        nonlocal num_finished
        while time.perf_counter() < stop_at:
            result = await run_request(
                client, config.url, config.model, workload.next(), api_key=config.batch_key,
                extra_body=body, extra_headers=headers, on_text=count_token,
            )
            if not result.ok:
                errors.append(result.error)
                await asyncio.sleep(0.1)  # a refused request (429/503) must not spin
            else:
                num_finished += 1

    tasks = [asyncio.create_task(loop()) for _ in range(config.batch_concurrency)]
    await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
    counted = num_tokens
    for task in tasks:  # streams still running at the end are abandoned: the server aborts them
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "num_requests": num_finished,
        "output_tokens": counted,
        "output_tokens_per_s": round(counted / (stop_at - start), 3),
        "num_errors": len(errors),
        "errors": errors[:5],
    }


async def batch_api_flood(
    client: httpx.AsyncClient, config: MixConfig, start: float, stop_at: float
) -> dict[str, Any]:
    """One Batch API job through the phase; tokens/s from the lines it completed inside the phase."""
    auth = {"Authorization": f"Bearer {config.batch_key}"} if config.batch_key else {}
    workload = Workload(
        config.batch_prompt_len, LengthDist("fixed", config.batch_output_len), config.seed + 1
    )
    # Enough lines for a server ten times faster than 100 tokens/s per flood slot.
    num_lines = max(100, int(config.duration_s * config.batch_concurrency * 1000 / config.batch_output_len))
    lines = []
    for i in range(num_lines):
        spec = workload.next()
        body = {
            "model": config.model,
            "messages": [{"role": "user", "content": spec.prompt}],
            "max_tokens": spec.max_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
        }
        lines.append(
            json.dumps(
                {"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            )
        )
    files = {"file": ("flood.jsonl", ("\n".join(lines) + "\n").encode(), "application/jsonl")}
    uploaded = await client.post(
        f"{config.url}/v1/files", files=files, data={"purpose": "batch"}, headers=auth
    )
    uploaded.raise_for_status()
    created = await client.post(
        f"{config.url}/v1/batches",
        json={"input_file_id": uploaded.json()["id"], "endpoint": "/v1/chat/completions"},
        headers=auth,
    )
    created.raise_for_status()
    batch_id = created.json()["id"]

    async def completed() -> int:
        response = await client.get(f"{config.url}/v1/batches/{batch_id}", headers=auth)
        response.raise_for_status()
        return int(response.json()["request_counts"]["completed"])

    first = await completed()
    while time.perf_counter() < stop_at:
        await asyncio.sleep(min(BATCH_API_POLL_S, max(0.0, stop_at - time.perf_counter())))
    last = await completed()
    await client.post(f"{config.url}/v1/batches/{batch_id}/cancel", headers=auth)
    num_tokens = (last - first) * config.batch_output_len
    return {
        "batch_id": batch_id,
        "num_requests": last - first,
        "output_tokens": num_tokens,
        "output_tokens_per_s": round(num_tokens / (stop_at - start), 3),
    }


def interactive_summary(results: list[RequestResult]) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    return {
        "num_requests": len(results),
        "num_errors": len(results) - len(ok),
        "errors": [r.error for r in results if not r.ok][:5],
        "ttft_ms": summarize_ms([r.ttft_s for r in ok]),
        "tpot_ms": summarize_ms([t for r in ok if (t := r.tpot_s) is not None]),
    }


async def run_phase(config: MixConfig, interactive: bool, flood: bool) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=config.batch_concurrency + 256)
    async with (
        httpx.AsyncClient(timeout=config.timeout_s, limits=limits) as chat_client,
        httpx.AsyncClient(timeout=config.timeout_s, limits=limits) as flood_client,
    ):
        start = time.perf_counter()
        stop_at = start + config.duration_s
        jobs: list[asyncio.Task[Any]] = []
        if flood:
            run_flood = batch_api_flood if config.flood == "batch-api" else request_flood
            jobs.append(asyncio.create_task(run_flood(flood_client, config, start, stop_at)))
        if interactive:
            jobs.append(asyncio.create_task(interactive_load(chat_client, config, stop_at)))
        done = await asyncio.gather(*jobs)
    out: dict[str, Any] = {}
    if flood:
        out["batch"] = done[0]
    if interactive:
        out["interactive"] = interactive_summary(done[-1])
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


async def run_mix(config: MixConfig, log: bool = True) -> dict[str, Any]:
    # Warm up: the first requests of a server pay one-time costs (compilation, caches).
    async with httpx.AsyncClient(timeout=config.timeout_s) as client:
        spec = Workload(config.interactive_prompt_len, config.interactive_output_len, config.seed).next()
        await run_request(client, config.url, config.model, spec, api_key=config.interactive_key)
    phases: dict[str, Any] = {}
    for name, interactive, flood in (
        ("interactive_alone", True, False),
        ("batch_alone", False, True),
        ("mixed", True, True),
    ):
        phases[name] = await run_phase(config, interactive, flood)
        if log:
            print(f"{name}: {json.dumps(phases[name])}", file=sys.stderr)

    def ttft(phase: str, q: str, metric: str = "ttft_ms") -> float | None:
        summary = phases[phase]["interactive"][metric]
        return summary[q] if summary else None

    def tpot(phase: str) -> float | None:
        return ttft(phase, "p50", "tpot_ms")

    alone_tps = phases["batch_alone"]["batch"]["output_tokens_per_s"]
    mixed_tps = phases["mixed"]["batch"]["output_tokens_per_s"]
    return {
        "target": config.target,
        "url": config.url,
        "model": config.model,
        "flood": config.flood,
        "rate": config.rate,
        "duration_s": config.duration_s,
        "batch_concurrency": config.batch_concurrency,
        "interactive_ttft_p50_ms": {"alone": ttft("interactive_alone", "p50"), "mixed": ttft("mixed", "p50")},
        "interactive_ttft_p99_ms": {"alone": ttft("interactive_alone", "p99"), "mixed": ttft("mixed", "p99")},
        "interactive_tpot_p50_ms": {"alone": tpot("interactive_alone"), "mixed": tpot("mixed")},
        "batch_output_tokens_per_s": {"alone": alone_tps, "mixed": mixed_tps},
        # The goal: TTFT p99 and TPOT p50 ratios <= 1.5 while the batch keeps >= 0.6 of its throughput.
        "ttft_p99_ratio": _ratio(ttft("mixed", "p99"), ttft("interactive_alone", "p99")),
        "tpot_p50_ratio": _ratio(tpot("mixed"), tpot("interactive_alone")),
        "batch_throughput_ratio": _ratio(mixed_tps, alone_tps),
        "phases": phases,
    }


@dataclass(frozen=True)
class RunOptions:
    output: Path | None = None
    repeat: int = 1
    scenario: str = "mix"  # "mix" | "tenants" (loadtest/tenant_shares.py)
    tenant_keys: tuple[str, ...] = ()
    tenant_weights: tuple[float, ...] = (2.0, 1.0)
    sparse_key: str | None = None
    sparse_interval_s: float = 5.0


def parse_args(argv: list[str] | None = None) -> tuple[MixConfig, RunOptions]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--target", choices=("busstop", "vllm"), default="busstop")
    p.add_argument("--flood", choices=("requests", "batch-api"), default="requests")
    p.add_argument("--rate", type=float, default=1.0, help="interactive requests per second")
    p.add_argument("--duration", type=float, default=60.0, help="seconds per phase")
    p.add_argument("--batch-concurrency", type=int, default=32)
    p.add_argument("--interactive-prompt-len", default="uniform:32:128")
    p.add_argument("--interactive-output-len", default="fixed:64")
    p.add_argument("--batch-prompt-len", default="uniform:64:256")
    p.add_argument("--batch-output-len", type=int, default=128)
    p.add_argument("--interactive-key", help="busstop: a public key (the interactive class)")
    p.add_argument("--batch-key", help="busstop: an internal key (the batch class)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=1, help="runs in a row; prints each and the worst")
    p.add_argument("--scenario", choices=("mix", "tenants"), default="mix",
                   help="tenants: two internal tenants flood, a third sends now and then")
    p.add_argument("--tenant-keys", default="", help="tenants: the two flooding tenants' keys, a,b")
    p.add_argument("--tenant-weights", default="2,1", help="tenants: their weights in the keys file")
    p.add_argument("--sparse-key", help="tenants: the key of the tenant that sends now and then")
    p.add_argument("--sparse-interval", type=float, default=5.0, help="tenants: seconds between its requests")
    p.add_argument("-o", "--output", type=Path, help="write the result JSON here too")
    args = p.parse_args(argv)
    config = MixConfig(
        url=args.url.rstrip("/"),
        model=args.model,
        target=args.target,
        flood=args.flood,
        rate=args.rate,
        duration_s=args.duration,
        batch_concurrency=args.batch_concurrency,
        interactive_prompt_len=LengthDist.parse(args.interactive_prompt_len),
        interactive_output_len=LengthDist.parse(args.interactive_output_len),
        batch_prompt_len=LengthDist.parse(args.batch_prompt_len),
        batch_output_len=args.batch_output_len,
        interactive_key=args.interactive_key,
        batch_key=args.batch_key,
        seed=args.seed,
    )
    options = RunOptions(
        output=args.output,
        repeat=args.repeat,
        scenario=args.scenario,
        tenant_keys=tuple(k for k in args.tenant_keys.split(",") if k),
        tenant_weights=tuple(float(w) for w in args.tenant_weights.split(",")),
        sparse_key=args.sparse_key,
        sparse_interval_s=args.sparse_interval,
    )
    if options.repeat < 1:
        raise ValueError("--repeat must be >= 1")
    if options.scenario == "tenants" and (
        len(options.tenant_keys) != 2 or len(options.tenant_weights) != 2 or not options.sparse_key
    ):
        raise ValueError("--scenario tenants needs --tenant-keys a,b, --tenant-weights wa,wb, --sparse-key")
    return config, options


async def run_once(config: MixConfig, options: RunOptions) -> dict[str, Any]:
    if options.scenario == "mix":
        return await run_mix(config)
    from loadtest.tenant_shares import TenantConfig, run_tenants  # it builds on this module's floods

    assert options.sparse_key is not None
    tenants = TenantConfig(
        config, (options.tenant_keys[0], options.tenant_keys[1]),
        (options.tenant_weights[0], options.tenant_weights[1]), options.sparse_key, options.sparse_interval_s,
    )
    return await run_tenants(tenants)


def main(argv: list[str] | None = None) -> int:
    try:
        config, options = parse_args(argv)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = []
    for i in range(options.repeat):
        results.append(asyncio.run(run_once(config, options)))
        if options.repeat > 1:
            print(f"run {i + 1}: {json.dumps({k: v for k, v in results[-1].items() if k in WORST_OF})}",
                  file=sys.stderr)
    result = results[0] if options.repeat == 1 else {"runs": results, "worst": worst(results)}
    text = json.dumps(result)
    print(text)
    if options.output is not None:
        options.output.parent.mkdir(parents=True, exist_ok=True)
        options.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
