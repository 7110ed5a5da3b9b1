"""A tensor-parallel worker on the real stack: it serves, and when one of its ranks dies the whole
worker exits non-zero; its in-flight request stays pending and another worker completes it.

SmolLM2-135M has 9 query / 3 KV heads, so the TP worker runs 3 ranks (gloo on CPU).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
import redis

from busstop.stack import LocalStack
from shared.messages import ReplyKind
from tests.stack import long_stream, reply_events, req_id_of_chunk, running_stack

NUM_TOKENS = 64
TP_ENV = {"BUSSTOP_WORKER_TENSOR_PARALLEL_SIZE": "3"}


def rank_pids(worker_pid: int) -> list[int]:
    """The worker's rank processes (spawned children; not multiprocessing's resource tracker)."""
    ranks = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if parent == worker_pid and b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            ranks.append(int(entry))
    return ranks


@pytest.fixture(scope="module")
def tp_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, redis.Redis]]:
    """The stack with one TP=3 worker."""
    with running_stack(tmp_path_factory.mktemp("e2e-tp"), num_workers=1, env=TP_ENV) as stack:
        client = stack.redis.client()
        yield stack, client
        client.close()


def test_a_dead_rank_ends_its_worker_and_the_request_completes_elsewhere(
    tp_stack: tuple[LocalStack, redis.Redis],
) -> None:
    stack, store = tp_stack
    (tp_worker,) = stack.workers
    ranks = rank_pids(tp_worker.pid)
    assert len(ranks) == 2  # ranks 1 and 2; rank 0 is the worker process itself
    stream = long_stream(stack, NUM_TOKENS)
    chunks = []
    req_id = ""
    for chunk in stream:
        chunks.append(chunk)
        if not req_id and sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 4:
            req_id = req_id_of_chunk(chunk.id)
            os.kill(ranks[0], signal.SIGKILL)
            assert tp_worker.wait(timeout=60) == 1  # the group ended, the request left pending
            # A single-process worker comes up and reclaims it; the client's stream goes on.
            stack.start_worker({"BUSSTOP_WORKER_TENSOR_PARALLEL_SIZE": "1"})
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == NUM_TOKENS
    events = reply_events(store, req_id)
    assert [e.seq for e in events] == list(range(len(events)))  # no gap, no duplicate
    accepted_by = [e.worker_id for e in events if e.kind is ReplyKind.ACCEPTED]
    assert len(accepted_by) == 2
    assert f"-{tp_worker.pid}-" in accepted_by[0] and f"-{stack.workers[1].pid}-" in accepted_by[1]
    assert sum(len(e.token_ids) for e in events if e.kind is ReplyKind.DELTA) == NUM_TOKENS
    assert events[-1].kind is ReplyKind.DONE
    deadline = time.monotonic() + 30
    while not all(_is_gone(pid) for pid in ranks[1:]):
        assert time.monotonic() < deadline, "a surviving rank outlived its group"
        time.sleep(0.2)


def _is_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # exited, not reaped yet
    except FileNotFoundError:
        return True
