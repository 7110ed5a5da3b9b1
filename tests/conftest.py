"""Fixtures every test tree shares: a real Redis server, and the gpu marker's skip."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from busstop.redis_cluster import LocalRedisCluster
from busstop.redis_server import RedisServer
from tests.stack import stack, store  # noqa: F401 - one running stack for the e2e, browser and load tests


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server process for the whole test session."""
    with RedisServer(appendonly=False) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session's Redis, emptied before each test that uses it."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalRedisCluster]:
    """One real Redis Cluster (3 primaries, 3 replicas) for the tests that need one."""
    with LocalRedisCluster() as cluster:
        yield cluster


@pytest.fixture
def cluster_url(redis_cluster: LocalRedisCluster) -> Iterator[str]:
    """The session's Redis Cluster, emptied before each test that uses it."""
    with redis_cluster.client() as client:
        client.flushall()
    yield redis_cluster.url
