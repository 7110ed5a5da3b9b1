"""Connecting to Redis, one server or a Redis Cluster, and running Lua scripts on either.

``BUSSTOP_REDIS_CLUSTER=true`` makes every client of the gateway and the worker a cluster client on
the same ``BUSSTOP_REDIS_URL`` (any node of the cluster). Nothing else changes: every key carries a
hash tag (``shared/keys.py``), so each multi-key command, transaction and script stays in one slot.
The cluster clients are typed as the plain ones: busstop calls only what both have.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, cast

import redis
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError


def connect(url: str, timeout_s: float, max_block_s: float = 0.0, cluster: bool = False) -> Redis:
    """An async client that gives up on a silent Redis after ``timeout_s`` (plus ``max_block_s``, the
    longest blocking read it makes). A plain client does not retry by itself (``RetryPolicy`` is the
    one policy); a cluster client keeps its own few retries, which follow a failover's new topology."""
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": timeout_s,
        "socket_timeout": timeout_s + max_block_s,
    }
    if cluster:
        return cast(Redis, RedisCluster.from_url(url, **options))
    return Redis.from_url(url, retry=Retry(NoBackoff(), 0), **options)


def connect_sync(url: str, timeout_s: float, cluster: bool = False) -> redis.Redis:
    """A blocking client, for the threads that must beat whatever the event loop does."""
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
    }
    if cluster:
        return cast(redis.Redis, redis.RedisCluster.from_url(url, **options))
    return redis.Redis.from_url(url, **options)


class LuaScript:
    """A Lua script run by its SHA, alone or queued in a pipeline of either client.

    A node that does not know it yet (new, restarted, or a replica just promoted) answers NOSCRIPT;
    the script is then loaded (on every primary of a cluster) and the call made again.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def queue(self, pipe: Any, keys: Sequence[str], args: Sequence[Any]) -> None:
        # Not ``pipe.evalsha``: redis-py blocks that method in cluster pipelines, though a script whose
        # keys share a slot runs there like any command.
        pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)

    async def __call__(self, client: Redis, keys: Sequence[str], args: Sequence[Any] = ()) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)  # type: ignore[misc]
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)  # type: ignore[misc]


async def execute_loading(
    client: Redis, build: Callable[[Any], None], scripts: Sequence[LuaScript]
) -> list[Any]:
    """Run the pipeline that ``build`` fills; on NOSCRIPT, load ``scripts`` and run it once more.

    The commands before the failing one have run, so only idempotent batches may be built here.
    """
    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
        build(pipe)
        try:
            return cast(list[Any], await pipe.execute())
        except NoScriptError:
            if attempt:
                raise
            for script in scripts:
                await client.script_load(script.source)
    raise AssertionError("unreachable")


def execute_loading_sync(
    client: redis.Redis, build: Callable[[Any], None], scripts: Sequence[LuaScript]
) -> list[Any]:
    """``execute_loading`` for a blocking client."""
    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
        build(pipe)
        try:
            return cast(list[Any], pipe.execute())
        except NoScriptError:
            if attempt:
                raise
            for script in scripts:
                client.script_load(script.source)
    raise AssertionError("unreachable")
