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
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.maint_notifications import MaintNotificationsConfig

# No maintenance-notification handshake on each new connection: Redis OSS has none to send, and
# after a failover every client opens many connections at once.
_CLUSTER_OPTIONS: dict[str, Any] = {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}


def _is_torn_down(exc: BaseException) -> bool:
    """redis-py's async cluster client closes a node's connections when the topology changes, also
    under a command that is using one; that command then fails with a bare Python error."""
    return (isinstance(exc, AttributeError) and "'NoneType' object" in str(exc)) or (
        isinstance(exc, RuntimeError) and "closed" in str(exc)
    )


class _ClusterPipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except (AttributeError, RuntimeError) as exc:
            if _is_torn_down(exc):
                raise RedisConnectionError(f"connection closed during a topology change: {exc}") from exc
            raise


class _Cluster(RedisCluster):
    """The async cluster client, made fit for a failover: a connection closed under a command is a
    ``ConnectionError`` (retried like any), and XREAD and XREADGROUP are routed without asking a node
    first. redis-py asks one (``COMMAND GETKEYS``) on every such call: a round trip more per read,
    through one node that may be the one failing over. Their keys follow ``STREAMS``, half of what
    is left."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except (AttributeError, RuntimeError) as exc:
            if _is_torn_down(exc):
                raise RedisConnectionError(f"connection closed during a topology change: {exc}") from exc
            raise

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            raise ValueError("no shard_hint in cluster mode")
        return _ClusterPipeline(self, transaction)  # type: ignore[abstract]

    async def _determine_slot(self, command: str, *args: Any) -> int:
        if command.upper() in ("XREAD", "XREADGROUP"):
            words = [a.decode() if isinstance(a, bytes) else str(a) for a in args]
            start = next(i for i, w in enumerate(words) if w.upper() == "STREAMS") + 1
            streams = words[start : start + (len(words) - start) // 2]
            slots = {self.keyslot(s) for s in streams}
            if len(slots) == 1:
                return slots.pop()
        return await super()._determine_slot(command, *args)


def connect(
    url: str, timeout_s: float, max_block_s: float = 0.0, cluster: bool = False,
    max_connections: int | None = None,
) -> Redis:
    """An async client that gives up on a silent Redis after ``timeout_s`` (plus ``max_block_s``, the
    longest blocking read it makes). A plain client does not retry by itself (``RetryPolicy`` is the
    one policy); a cluster client keeps its own few retries, which follow a failover's new topology."""
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": timeout_s,
        "socket_timeout": timeout_s + max_block_s,
    }
    if max_connections is not None:  # else redis-py's default (100 for one server); per node on a cluster
        options["max_connections"] = max_connections
    if cluster:
        return cast(Redis, _Cluster.from_url(url, **options, **_CLUSTER_OPTIONS))
    return Redis.from_url(url, retry=Retry(NoBackoff(), 0), **options)


def connect_sync(url: str, timeout_s: float, cluster: bool = False) -> redis.Redis:
    """A blocking client, for the threads that must beat whatever the event loop does."""
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
    }
    if cluster:
        return cast(redis.Redis, redis.RedisCluster.from_url(url, **options, **_CLUSTER_OPTIONS))
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
