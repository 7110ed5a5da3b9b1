"""Graceful drain: SIGTERM to a worker under load loses nothing.

The stack runs one worker; several greedy streams start on it; a second worker starts and the
first gets SIGTERM with a one-second grace period, so it finishes what it can and leaves the rest
pending in Redis. Every stream still ends with all its tokens: the second worker reclaims the
leftovers and resumes them where the client is. The reply streams show which worker did what.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from busstop.redis_server import free_port
from busstop.stack import LocalStack
from shared import keys
from shared.messages import DATA_FIELD, ReplyEvent, ReplyKind
from tests.deploy.stack_client import StreamedChat, stream_chat

NUM_STREAMS = 3
MAX_TOKENS = 512  # long enough that the first worker still streams when its grace period ends
GRACE_PERIOD_S = 1.0
# Fast failure detection, so the leftovers are reclaimed within seconds (the production defaults
# are minutes-safe; the settings' validators keep these consistent).
FAST_RECLAIM = {
    "BUSSTOP_WORKER_HEARTBEAT_INTERVAL_S": "0.5",
    "BUSSTOP_WORKER_HEARTBEAT_TTL_S": "2",
    "BUSSTOP_WORKER_RECLAIM_MIN_IDLE_MS": "1500",
    "BUSSTOP_WORKER_GRACE_PERIOD_S": str(GRACE_PERIOD_S),
    "BUSSTOP_MODEL_KV_CACHE_BYTES": str(64 * 1024 * 1024),
}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    with LocalStack(port=free_port(), env=FAST_RECLAIM, log_dir=tmp_path / "logs") as running:
        yield running


def accepted_by(redis_url: str, req_id: str) -> list[str]:
    """The worker ids of the ACCEPTED events in a request's reply stream, in order."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entries: list[tuple[str, dict[str, str]]] = client.xrange(keys.reply_stream(req_id))  # type: ignore[assignment]
    finally:
        client.close()
    events = [ReplyEvent.model_validate_json(fields[DATA_FIELD]) for _, fields in entries]
    assert [e.seq for e in events] == list(range(len(events))), "a gap or a duplicate in the reply stream"
    return [e.worker_id or "" for e in events if e.kind is ReplyKind.ACCEPTED]


def test_sigterm_mid_load_loses_no_request(stack: LocalStack) -> None:
    (first_worker,) = stack.workers
    results: list[StreamedChat | BaseException] = []
    all_streaming = threading.Barrier(NUM_STREAMS + 1, timeout=120)

    def client(i: int) -> None:
        def on_chunk(chat: StreamedChat) -> None:
            if chat.num_chunks == 1:
                all_streaming.wait()

        try:
            results.append(
                stream_chat(
                    stack.url, stack.api_key, f"Write a long story about bus stop {i}.", MAX_TOKENS, on_chunk
                )
            )
        except BaseException as exc:  # reported below, with the others' results
            results.append(exc)
            all_streaming.abort()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(NUM_STREAMS)]
    for t in threads:
        t.start()
    all_streaming.wait()  # every stream has its first token: the first worker holds them all
    stack.start_worker()
    first_worker.send_signal(signal.SIGTERM)
    assert first_worker.wait(timeout=GRACE_PERIOD_S + 30) == 0  # drained and exited cleanly
    for t in threads:
        t.join(timeout=240)

    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures
    chats = [r for r in results if isinstance(r, StreamedChat)]
    assert len(chats) == NUM_STREAMS
    for chat in chats:
        assert chat.finish_reason == "length"
        assert chat.usage["completion_tokens"] == MAX_TOKENS
    handed_over = [chat for chat in chats if len(set(accepted_by(stack.redis.url, chat.req_id))) == 2]
    assert handed_over, "the drained worker finished everything itself: the test did not exercise a hand-over"
