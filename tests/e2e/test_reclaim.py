"""Workers that go away mid-request: their requests move to a live worker and complete there.

SIGKILL: the message stays pending, a live worker reclaims it after the idle threshold and resumes
it from the reply stream. SIGTERM with a short grace period: the worker stops taking work, leaves the
request unacknowledged and exits; another worker picks it up the same way. Either way the client
sees one unbroken stream: every token exactly once, then the usage of the whole completion.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
import redis

from busstop.stack import LocalStack
from shared import keys
from shared.messages import ReplyKind, TrafficClass
from tests.stack import (
    MODEL,
    ON_CLUSTER,
    heartbeats,
    long_stream,
    reply_events,
    req_id_of_chunk,
    running_stack,
)

NUM_TOKENS = 96


@pytest.fixture(scope="module")
def three_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, redis.Redis]]:
    log_dir = tmp_path_factory.mktemp("e2e-reclaim")
    with running_stack(log_dir, num_workers=3, env={"BUSSTOP_WORKER_GRACE_PERIOD_S": "0.5"}) as stack:
        client = stack.redis.client()
        assert len(heartbeats(client)) == 3
        yield stack, client
        client.close()


def stream_and_stop_holder(
    stack: LocalStack, store: redis.Redis, sig: signal.Signals
) -> tuple[list, str, str]:
    """Stream a fixed-length completion; after 4 tokens send ``sig`` to the worker holding it.

    Returns (chunks, req_id, the stopped worker's id) once the stream has ended.
    """
    stream = long_stream(stack, NUM_TOKENS)
    chunks = []
    req_id = stopped_id = ""
    for chunk in stream:
        chunks.append(chunk)
        if not stopped_id and sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 4:
            req_id = req_id_of_chunk(chunk.id)
            stopped_id = next(
                e.worker_id for e in reply_events(store, req_id) if e.kind is ReplyKind.ACCEPTED
            )
            (holder,) = [w for w in stack.workers if f"-{w.pid}-" in stopped_id]
            holder.send_signal(sig)
            assert holder.wait(timeout=60) == (-signal.SIGKILL if sig is signal.SIGKILL else 0)
            if sig is not signal.SIGKILL:  # left for others: still pending, no final event, not alive
                partition = keys.partition_of(req_id, keys.request_partitions(ON_CLUSTER))
                stream_key = keys.request_stream(MODEL, TrafficClass.INTERACTIVE, partition)
                assert store.xpending(stream_key, keys.WORKER_GROUP)["pending"] == 1
                assert ReplyKind.DONE not in [e.kind for e in reply_events(store, req_id)]
                assert store.exists(keys.worker_key(MODEL, stopped_id)) == 0
    return chunks, req_id, stopped_id


def assert_completed_elsewhere(chunks: list, store: redis.Redis, req_id: str, stopped_id: str) -> None:
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == NUM_TOKENS
    finish_reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish_reasons == ["length"]
    events = reply_events(store, req_id)
    assert [e.seq for e in events] == list(range(len(events)))  # no gap, no duplicate
    accepted_by = [e.worker_id for e in events if e.kind is ReplyKind.ACCEPTED]
    assert len(accepted_by) == 2 and accepted_by[0] == stopped_id and accepted_by[1] != stopped_id
    assert sum(len(e.token_ids) for e in events if e.kind is ReplyKind.DELTA) == NUM_TOKENS
    assert events[-1].kind is ReplyKind.DONE


def test_a_killed_workers_request_is_reclaimed_and_completed(
    three_workers: tuple[LocalStack, redis.Redis],
) -> None:
    stack, store = three_workers
    chunks, req_id, killed_id = stream_and_stop_holder(stack, store, signal.SIGKILL)
    assert_completed_elsewhere(chunks, store, req_id, killed_id)


def test_a_stopped_worker_leaves_unfinished_requests_to_others(
    three_workers: tuple[LocalStack, redis.Redis],
) -> None:
    stack, store = three_workers
    chunks, req_id, stopped_id = stream_and_stop_holder(stack, store, signal.SIGTERM)
    assert_completed_elsewhere(chunks, store, req_id, stopped_id)
