"""Benchmark any OpenAI-compatible server at fixed concurrencies or Poisson arrival rates.

    python -m loadtest.bench --url http://127.0.0.1:8000 --model smollm2 --concurrency 1,16,64 \\
        --label busstop -o results/busstop.json

Each load level runs for ``--duration`` seconds (or ``--num-requests`` requests) and is summarized:
requests/s, output tokens/s, TTFT, TPOT, inter-token latency and end-to-end percentiles. The JSON
file holds ``{"runs": [run]}``; ``python -m loadtest.plot`` draws one or many such files together,
so curves of busstop and another server (vLLM) measured on the same machine share one figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from loadtest.client import RequestResult, run_request
from loadtest.plot import plot_runs
from loadtest.stats import summarize_level
from loadtest.workload import LengthDist, Workload

API_KEY_ENV = "BUSSTOP_API_KEY"
MAX_OPEN_LOOP_CONNECTIONS = 1024


@dataclass(frozen=True)
class BenchConfig:
    url: str
    model: str
    mode: str  # "concurrency" (closed loop) | "rate" (open loop, Poisson arrivals per second)
    loads: tuple[float, ...]
    prompt_len: LengthDist
    output_len: LengthDist
    duration_s: float | None = 30.0
    num_requests: int | None = None
    num_warmup: int = 1
    api_key: str | None = None
    chat: bool = True
    ignore_eos: bool = True
    seed: int = 0
    label: str = ""
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.mode not in ("concurrency", "rate"):
            raise ValueError(f"mode must be 'concurrency' or 'rate', got {self.mode!r}")
        if not self.loads or any(load <= 0 for load in self.loads):
            raise ValueError("load levels must be positive numbers")
        if self.mode == "concurrency" and any(load != int(load) for load in self.loads):
            raise ValueError("concurrency levels must be whole numbers")
        if (self.duration_s is None) == (self.num_requests is None):
            raise ValueError("give exactly one of duration_s and num_requests")
        if (self.duration_s is not None and self.duration_s <= 0) or (
            self.num_requests is not None and self.num_requests < 1
        ):
            raise ValueError("duration_s and num_requests must be positive")


class _Budget:
    """Hands out request slots until the level's request count or duration is used up."""

    def __init__(self, config: BenchConfig) -> None:
        self._left = config.num_requests or 0
        self._deadline = None if config.duration_s is None else time.perf_counter() + config.duration_s

    def take(self) -> bool:
        if self._deadline is not None:
            return time.perf_counter() < self._deadline
        if self._left <= 0:
            return False
        self._left -= 1
        return True


async def _send(client: httpx.AsyncClient, config: BenchConfig, workload: Workload) -> RequestResult:
    return await run_request(
        client,
        config.url,
        config.model,
        workload.next(),
        api_key=config.api_key,
        chat=config.chat,
        ignore_eos=config.ignore_eos,
    )


async def run_closed_loop(
    client: httpx.AsyncClient, config: BenchConfig, workload: Workload, concurrency: int
) -> list[RequestResult]:
    """``concurrency`` clients, each sending its next request as soon as the previous one ends."""
    budget = _Budget(config)
    results: list[RequestResult] = []

    async def client_loop() -> None:
        while budget.take():
            results.append(await _send(client, config, workload))

    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return results


async def run_open_loop(
    client: httpx.AsyncClient, config: BenchConfig, workload: Workload, rate: float
) -> list[RequestResult]:
    """Requests arriving as a Poisson process of ``rate`` per second, whatever the server's pace."""
    budget = _Budget(config)
    rng = random.Random(config.seed + 1)
    tasks: list[asyncio.Task[RequestResult]] = []
    while budget.take():
        tasks.append(asyncio.create_task(_send(client, config, workload)))
        await asyncio.sleep(rng.expovariate(rate))
    return list(await asyncio.gather(*tasks))


async def run_bench(config: BenchConfig, log: bool = True) -> dict[str, Any]:
    """Run every load level in order and return the run as a JSON-ready dict."""
    workload = Workload(config.prompt_len, config.output_len, seed=config.seed)
    max_connections = (
        int(max(config.loads)) + 8 if config.mode == "concurrency" else MAX_OPEN_LOOP_CONNECTIONS
    )
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    timeout = httpx.Timeout(config.timeout_s, connect=10.0)
    levels: list[dict[str, object]] = []
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        for _ in range(config.num_warmup):
            warmup = await _send(client, config, workload)
            if not warmup.ok:
                raise RuntimeError(f"warm-up request failed: {warmup.error}")
        for load in config.loads:
            start = time.perf_counter()
            if config.mode == "concurrency":
                results = await run_closed_loop(client, config, workload, int(load))
            else:
                results = await run_open_loop(client, config, workload, load)
            level = summarize_level(load, results, time.perf_counter() - start)
            levels.append(level)
            if log:
                print(format_level(config.mode, level), file=sys.stderr, flush=True)
    return {
        "label": config.label or config.model,
        "url": config.url,
        "model": config.model,
        "mode": config.mode,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "prompt_len": str(config.prompt_len),
            "output_len": str(config.output_len),
            "duration_s": config.duration_s,
            "num_requests": config.num_requests,
            "chat": config.chat,
            "ignore_eos": config.ignore_eos,
            "seed": config.seed,
        },
        "levels": levels,
    }


def format_level(mode: str, level: dict[str, object]) -> str:
    def p(metric: str, q: str) -> str:
        summary = level[metric]
        return f"{summary[q]:.1f}" if isinstance(summary, dict) else "-"

    return (
        f"{mode}={level['load']:g}  ok={level['num_ok']} err={level['num_errors']}  "
        f"req/s={level['req_per_s']:.2f}  out tok/s={level['output_tok_per_s']:.1f}  "
        f"TTFT p50/p99={p('ttft_ms', 'p50')}/{p('ttft_ms', 'p99')} ms  "
        f"TPOT p50/p99={p('tpot_ms', 'p50')}/{p('tpot_ms', 'p99')} ms"
    )


def _loads(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, Path, Path | None]:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", required=True, help="served model name")
    load = parser.add_mutually_exclusive_group(required=True)
    load.add_argument("--concurrency", type=_loads, help="closed loop: comma-separated client counts")
    load.add_argument("--rate", type=_loads, help="open loop: comma-separated Poisson arrival rates (req/s)")
    stop = parser.add_mutually_exclusive_group()
    stop.add_argument("--duration", type=float, help="seconds per load level (default 30)")
    stop.add_argument("--num-requests", type=int, help="requests per load level instead of a duration")
    parser.add_argument(
        "--prompt-len",
        type=LengthDist.parse,
        default=LengthDist.parse("uniform:16:128"),
        help="prompt words: fixed:N | uniform:LO:HI | normal:MEAN:STD (default uniform:16:128)",
    )
    parser.add_argument(
        "--output-len",
        type=LengthDist.parse,
        default=LengthDist.parse("uniform:32:128"),
        help="max_tokens per request, same forms (default uniform:32:128)",
    )
    parser.add_argument(
        "--api-key", default=os.environ.get(API_KEY_ENV), help=f"bearer key (env {API_KEY_ENV})"
    )
    parser.add_argument("--completions", action="store_true", help="use /v1/completions instead of chat")
    parser.add_argument(
        "--allow-eos",
        action="store_true",
        help="let the model stop early (default: ignore_eos, so output lengths are exact)",
    )
    parser.add_argument("--warmup", type=int, default=1, help="requests sent before measuring (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default="", help="name of this run in plots (default: the model)")
    parser.add_argument("-o", "--output", type=Path, default=Path("bench.json"), help="results JSON path")
    parser.add_argument("--plot", type=Path, help="PNG path (default: the output path with .png)")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    mode, loads = ("concurrency", args.concurrency) if args.concurrency else ("rate", args.rate)
    try:
        config = BenchConfig(
            url=args.url,
            model=args.model,
            mode=mode,
            loads=loads,
            prompt_len=args.prompt_len,
            output_len=args.output_len,
            duration_s=None if args.num_requests else (args.duration or 30.0),
            num_requests=args.num_requests,
            num_warmup=args.warmup,
            api_key=args.api_key,
            chat=not args.completions,
            ignore_eos=not args.allow_eos,
            seed=args.seed,
            label=args.label,
        )
    except ValueError as exc:
        parser.error(str(exc))
    plot = None if args.no_plot else (args.plot or args.output.with_suffix(".png"))
    return config, args.output, plot


def main(argv: list[str] | None = None) -> int:
    config, output, plot = parse_args(argv)
    try:
        run = asyncio.run(run_bench(config))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"runs": [run]}, indent=2) + "\n")
    print(f"wrote {output}", file=sys.stderr)
    if plot is not None:
        plot_runs([run], plot)
        print(f"wrote {plot}", file=sys.stderr)
    return 1 if any(level["num_ok"] == 0 for level in run["levels"]) else 0


if __name__ == "__main__":
    sys.exit(main())
