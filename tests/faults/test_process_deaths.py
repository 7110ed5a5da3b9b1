"""Faults on real processes: a worker or a gateway killed mid-stream, with the default timings.

Two workers and the bundled model; greedy streams of fixed length, so a run that survived a fault can
be compared with an uninterrupted one, byte for byte. The key has a concurrency limit of 1, so a slot
that leaks is seen by the next request.
"""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import Iterator

import openai
import pytest
import redis

from busstop.redis_server import free_port
from busstop.stack import LocalStack
from gateway.core.auth import KeyEntry, KeysFile, Limits, hash_key
from shared import keys
from shared.messages import ReplyKind
from tests.stack import MODEL, heartbeats, reply_events, req_id_of_chunk, running_stack

NUM_TOKENS = 160
PROMPT = "Write a long poem about rivers, in English, then say it again in Japanese."
# The heartbeat TTL, then at most one beat until a live worker claims the request, then its prefill.
MAX_STALL_S = keys.HEARTBEAT_TTL_S + 2 * keys.HEARTBEAT_INTERVAL_S


@pytest.fixture(scope="module")
def faults_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, redis.Redis, str]]:
    directory = tmp_path_factory.mktemp("faults")
    api_key = f"sk-faults-{secrets.token_hex(12)}"
    entry = KeyEntry(sha256=hash_key(api_key), tenant="faults", limits=Limits(max_concurrency=1))
    (directory / "keys.json").write_text(KeysFile(keys=[entry]).model_dump_json())
    env = {"BUSSTOP_KEYS_FILE": str(directory / "keys.json")}
    with running_stack(directory / "logs", num_workers=2, env=env) as stack:
        store = redis.Redis.from_url(stack.redis.url, decode_responses=True)
        assert len(heartbeats(store)) == 2
        yield stack, store, api_key
        store.close()


def stream(url: str, api_key: str) -> openai.Stream:  # type: ignore[type-arg]
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0)
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=NUM_TOKENS,
        temperature=0, stream=True, extra_body={"ignore_eos": True},
    )


def holder_of(stack: LocalStack, store: redis.Redis, req_id: str):  # type: ignore[no-untyped-def]
    worker_id = [e.worker_id for e in reply_events(store, req_id) if e.kind is ReplyKind.ACCEPTED][-1]
    (holder,) = [w for w in stack.workers if f"-{w.pid}-" in str(worker_id)]
    return holder


def test_a_killed_worker_costs_a_short_stall_and_not_a_byte(
    faults_stack: tuple[LocalStack, redis.Redis, str],
) -> None:
    stack, store, api_key = faults_stack
    reference = "".join(c.choices[0].delta.content or "" for c in stream(stack.url, api_key) if c.choices)
    text, gaps, last = "", [], time.monotonic()
    killed = False
    for chunk in stream(stack.url, api_key):
        now = time.monotonic()
        gaps.append(now - last)
        last = now
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if not killed and len(text) > 40:
            holder = holder_of(stack, store, req_id_of_chunk(chunk.id))
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=30)
            killed = True
            last = time.monotonic()
    assert killed
    assert text == reference  # nothing lost, nothing doubled: the same bytes as without the kill
    print(f"longest stall after the kill: {max(gaps):.2f} s")
    assert max(gaps) <= MAX_STALL_S
    stack.workers.remove(holder)
    stack.start_worker()  # back to two workers for the next test


def test_a_killed_gateway_stops_its_work_and_frees_its_slot(
    faults_stack: tuple[LocalStack, redis.Redis, str],
) -> None:
    stack, store, api_key = faults_stack
    deadline = time.monotonic() + 240
    while len(heartbeats(store)) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    chunks = stream(stack.url, api_key)
    first = next(c for c in chunks if c.choices and c.choices[0].delta.content)
    req_id = req_id_of_chunk(first.id)
    (inflight,) = store.scan_iter(match=keys.ratelimit_key("*", "inflight"))
    assert store.zscore(inflight, req_id) is not None
    assert stack.gateway is not None
    stack.gateway.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    stack.gateway.wait(timeout=30)
    while not any(e.kind is ReplyKind.DONE for e in reply_events(store, req_id)):
        assert time.monotonic() - killed_at < 10, "the worker went on generating"
        time.sleep(0.05)
    stopped_after = time.monotonic() - killed_at
    done = [e for e in reply_events(store, req_id) if e.kind is ReplyKind.DONE][-1]
    assert done.finish_reason == "abort" and done.usage is not None
    assert done.usage.completion_tokens < NUM_TOKENS
    print(f"worker stopped {stopped_after:.2f} s after the gateway died")
    assert stopped_after <= 2.0

    # Another replica: the slot of the dead gateway's request frees itself, and the key (limit 1) serves.
    port = free_port()
    stack.start_gateway(port)
    url = f"http://{stack.host}:{port}"
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0)
    while True:
        try:
            client.models.list()
            break
        except openai.APIConnectionError:
            assert time.monotonic() - killed_at < 60
            time.sleep(0.25)
    while True:
        try:
            reply = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
            )
            break
        except openai.RateLimitError:
            assert time.monotonic() - killed_at < 10, "the dead gateway's slot was not freed"
            time.sleep(0.25)
    freed_after = time.monotonic() - killed_at
    print(f"slot free {freed_after:.2f} s after the gateway died")
    assert reply.choices[0].message.content
    assert freed_after <= 10.0
