"""A real Redis Cluster on loopback: 3 primaries and 3 replicas, started from ``redis-server`` binaries.

For the tests (``BUSSTOP_TEST_REDIS_CLUSTER=1``) and for trying a pool the way it runs on many Redis
nodes (``busstop up --redis-cluster``). Nodes fail over after ``node_timeout_ms`` of silence, so a
primary that is SIGKILLed is replaced by its replica within a few seconds.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from types import TracebackType

import redis

from busstop.redis_server import RedisServer, find_redis_server

NUM_PRIMARIES = 3
BUS_PORT_OFFSET = 10000  # Redis Cluster's node-to-node port


def _free_node_ports(count: int) -> list[int]:
    """Ports that are free, as is each one's cluster bus port (port + 10000, so below 55536)."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20000, 30000)
        if port not in ports and all(_is_free(p) for p in (port, port + BUS_PORT_OFFSET)):
            ports.append(port)
    return ports


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class LocalRedisCluster:
    """``url`` is one node (cluster clients find the rest); ready once the context is entered."""

    def __init__(self, replicas_per_primary: int = 1, node_timeout_ms: int = 1000) -> None:
        extra = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            # A replica takes over however long it was cut off: a test kills primaries on purpose.
            "--cluster-replica-validity-factor", "0",
        ]
        count = NUM_PRIMARIES * (1 + replicas_per_primary)
        self.nodes = [RedisServer(port=port, extra_args=extra) for port in _free_node_ports(count)]
        self._replicas = replicas_per_primary

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def client(self) -> redis.RedisCluster:
        """A client that starts from a live node (the first may be one a test killed)."""
        return redis.RedisCluster.from_url(self.live_nodes()[0].url, decode_responses=True)

    def start(self, timeout_s: float = 30.0) -> LocalRedisCluster:
        try:
            for node in self.nodes:
                node.start()
            cli = find_redis_server().removesuffix("redis-server") + "redis-cli"
            subprocess.run(
                [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                 "--cluster-replicas", str(self._replicas), "--cluster-yes"],
                check=True, capture_output=True, timeout=timeout_s,
            )
            self.wait_ok(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every live node says the cluster is ok and agrees on who the primaries are."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self._is_ok():
                    return
            except (redis.RedisError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the Redis Cluster was not ok within {timeout_s:g}s")

    def _is_ok(self) -> bool:
        live = {n.port for n in self.live_nodes()}
        for port in live:
            with redis.Redis(port=port, decode_responses=True) as r:
                if r.cluster("info")["cluster_state"] != "ok":
                    return False
                primaries = {int(address.split(":")[1].split("@")[0])
                             for address, info in r.cluster("nodes").items()
                             if "master" in info["flags"] and info["slots"]}  # fmt: skip
                if len(primaries) != NUM_PRIMARIES or not primaries <= live:
                    return False
        return True

    def live_nodes(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def primary_of(self, key: str) -> RedisServer:
        """The node that now serves ``key``'s slot."""
        with self.client() as client:
            port = client.get_node_from_key(key).port
        return next(n for n in self.nodes if n.port == port)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
