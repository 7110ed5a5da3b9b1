"""The async client's connection cap: each streaming request holds a connection in a blocking read."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.core.config import GatewaySettings
from shared.redis_client import connect


async def blocking_reads(url: str, num_reads: int, max_connections: int | None) -> None:
    client = connect(url, 2.0, max_block_s=1.0, max_connections=max_connections)
    try:
        await asyncio.gather(*(client.xread({f"s{i}": "$"}, block=300) for i in range(num_reads)))
    finally:
        await client.aclose()


async def test_more_blocking_reads_than_redis_pys_default_pool_need_a_larger_cap(redis_url: str) -> None:
    with pytest.raises(RedisConnectionError, match="Too many connections"):
        await blocking_reads(redis_url, 150, None)
    await blocking_reads(redis_url, 150, GatewaySettings().redis_max_connections)
