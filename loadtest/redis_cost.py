"""Redis commands and Redis CPU per output token: the transport's cost, from ``INFO commandstats``
and ``INFO cpu``.

    python -m loadtest.redis_cost --url http://127.0.0.1:8000 --model smollm2 --concurrency 16 \\
        --num-requests 32 --max-tokens 64

Resets Redis's command statistics, runs ``--num-requests`` streams of ``--max-tokens`` tokens
(``ignore_eos``) at ``--concurrency``, then prints every command's count per output token. Redis counts
the commands a Lua script runs as well as the EVALSHA that ran it: the total is what Redis executes.
Background traffic (heartbeats, leases) counts too: that is what the pool costs while it serves.
``--redis`` is the stack's Redis (``busstop up`` prints it; default ``$BUSSTOP_REDIS_URL``); on a Redis
Cluster, any node: every primary is counted, and each one's share is printed.

The CPU Redis spent (user + system, all primaries) gives the capacity per core: Redis runs commands
on one thread, so each shard sustains about ``output tokens / CPU seconds`` tokens per second at 100%
of its core (times its share of the load). A measure, not a promise: keep shards well below that.
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


def cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def primaries(url: str) -> list[redis.Redis]:
    """A client per primary: the one server, or every primary of a cluster."""
    client = redis.Redis.from_url(url, decode_responses=True)
    if not client.info("cluster").get("cluster_enabled"):
        return [client]
    client.close()
    with redis.RedisCluster.from_url(url) as cluster:
        nodes = [(n.host, n.port) for n in cluster.get_primaries()]
    return [redis.Redis(host=h, port=p, decode_responses=True) for h, p in sorted(nodes)]


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
    nodes = primaries(args.redis)
    for node in nodes:
        node.config_resetstat()
    cpu_before = [cpu_s(node) for node in nodes]
    num_tokens = asyncio.run(
        run_load(args.url, args.model, args.api_key, args.concurrency, args.num_requests, args.max_tokens)
    )
    per_node = [command_counts(node) for node in nodes]
    cpu = [cpu_s(node) - before for node, before in zip(nodes, cpu_before, strict=True)]
    for node in nodes:
        node.close()
    counts: dict[str, int] = {}
    for node_counts in per_node:
        for name, n in node_counts.items():
            counts[name] = counts.get(name, 0) + n
    total = sum(counts.values())
    print(f"{args.num_requests} requests, {num_tokens} output tokens at concurrency {args.concurrency}")
    for name, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<20} {n:>8}  {n / num_tokens:6.3f} / token")
    print(f"{total / num_tokens:.2f} Redis commands per output token (those inside scripts included)")
    if len(nodes) > 1:
        shares = ", ".join(f"{sum(c.values()) / total:.0%}" for c in per_node)
        print(f"{len(nodes)} primaries; their shares of the commands: {shares}")
    print(f"{sum(cpu) * 1e6 / num_tokens:.1f} us of Redis CPU per output token: about "
          f"{num_tokens / max(sum(cpu), 1e-9):.0f} output tokens/s per Redis core at 100%")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
