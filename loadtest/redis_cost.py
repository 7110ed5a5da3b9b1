"""Redis commands per output token: the transport's cost, measured with ``INFO commandstats``.

    python -m loadtest.redis_cost --url http://127.0.0.1:8000 --model smollm2 --concurrency 16 \\
        --num-requests 32 --max-tokens 64

Resets Redis's command statistics, runs ``--num-requests`` streams of ``--max-tokens`` tokens
(``ignore_eos``) at ``--concurrency``, then prints every command's count per output token. Redis counts
the commands a Lua script runs as well as the EVALSHA that ran it: the total is what Redis executes.
Background traffic (heartbeats, leases) counts too: that is what the pool costs while it serves.
``--redis`` is the stack's Redis (``busstop up`` prints it; default ``$BUSSTOP_REDIS_URL``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random

import httpx
import redis

from loadtest.client import run_request
from loadtest.workload import RequestSpec, make_prompt


def command_counts(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def run_load(
    url: str, model: str, api_key: str | None, concurrency: int, num: int, max_tokens: int
) -> int:
    """Output tokens served; every request must succeed."""
    rng = random.Random(0)
    specs = [RequestSpec(make_prompt(rng, 20), max_tokens) for _ in range(num)]
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600) as client:

        async def one(spec: RequestSpec) -> int:
            async with limit:
                result = await run_request(client, url, model, spec, api_key=api_key)
            if not result.ok:
                raise RuntimeError(f"request failed: {result.error}")
            return result.num_output_tokens

        return sum(await asyncio.gather(*(one(s) for s in specs)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.redis_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--redis", default=os.environ.get("BUSSTOP_REDIS_URL"), help="the stack's Redis URL")
    parser.add_argument("--api-key", default=os.environ.get("BUSSTOP_API_KEY"))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--num-requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    if not args.redis:
        parser.error("--redis (or BUSSTOP_REDIS_URL) is required: the Redis that busstop up printed")
    client = redis.Redis.from_url(args.redis, decode_responses=True)
    client.config_resetstat()
    num_tokens = asyncio.run(
        run_load(args.url, args.model, args.api_key, args.concurrency, args.num_requests, args.max_tokens)
    )
    counts = command_counts(client)
    client.close()
    total = sum(counts.values())
    print(f"{args.num_requests} requests, {num_tokens} output tokens at concurrency {args.concurrency}")
    for name, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<20} {n:>8}  {n / num_tokens:6.3f} / token")
    print(f"{total / num_tokens:.2f} Redis commands per output token (those inside scripts included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
