"""A Redis Cluster primary SIGKILLed mid-load: its replica takes over, and every accepted request is
answered in full, byte for byte what an uninterrupted run gives."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from busstop.redis_cluster import LocalRedisCluster
from busstop.stack import LocalStack
from shared import keys
from tests.faults.conftest import stream, wait_for
from tests.stack import heartbeats, req_id_of_chunk, running_stack

NUM_CLIENTS = 6
REQUESTS_PER_CLIENT = 2  # the second ones are sent while the cluster fails over, or just after
MAX_TOKENS = 96
PROMPT = "Write a long poem about rivers."
# Redis Cluster's failover (node timeout 1 s, then the replicas' election), then the clients' retries.
MAX_STALL_S = 15.0


@pytest.fixture(scope="module")
def cluster_stack(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with running_stack(tmp_path_factory.mktemp("cluster") / "logs", redis_cluster=True) as stack:
        yield stack


def read_all(stack: LocalStack, started: threading.Event, req_ids: list[str]) -> tuple[list[str], float]:
    """Two greedy streams in a row: their texts and the longest wait between chunks."""
    texts, longest = [], 0.0
    for _ in range(REQUESTS_PER_CLIENT):
        text, last = "", time.monotonic()
        for chunk in stream(stack.url, stack.api_key, PROMPT, MAX_TOKENS):
            longest, last = max(longest, time.monotonic() - last), time.monotonic()
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if len(text) > 40 and not started.is_set():
                req_ids.append(req_id_of_chunk(chunk.id))
                started.set()
        texts.append(text)
    return texts, longest


def test_a_primary_killed_mid_load_fails_over_and_loses_no_request(cluster_stack: LocalStack) -> None:
    stack = cluster_stack
    cluster = stack.redis
    assert isinstance(cluster, LocalRedisCluster)
    chunks = stream(stack.url, stack.api_key, PROMPT, MAX_TOKENS)
    reference = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    started = [threading.Event() for _ in range(NUM_CLIENTS)]
    req_ids: list[str] = []
    with ThreadPoolExecutor(NUM_CLIENTS) as pool:
        runs = [pool.submit(read_all, stack, event, req_ids) for event in started]
        assert all(event.wait(120) for event in started)
        # The node that holds a streaming request's reply (and some request streams, leases, ...).
        victim = cluster.primary_of(keys.reply_stream(req_ids[0]))
        killed_at = time.monotonic()
        victim.kill()
        cluster.wait_ok()
        failover_s = time.monotonic() - killed_at
        outcomes = [run.result(timeout=300) for run in runs]

    longest = max(stall for _, stall in outcomes)
    print(f"\nfailover {failover_s:.2f} s; longest client stall {longest:.2f} s")
    for texts, _ in outcomes:
        assert texts == [reference] * REQUESTS_PER_CLIENT
    assert longest <= MAX_STALL_S
    # Nothing left running or held: the worker is idle with every page free.
    with cluster.client() as store:
        is_idle = lambda: all(b.num_running == 0 and b.num_free_pages == b.num_total_pages  # noqa: E731
                              for b in heartbeats(store))  # fmt: skip
        wait_for(is_idle, 30, "an idle worker")
