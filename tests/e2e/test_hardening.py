"""No request, stall or pause takes the pool down: two real workers, the real gateway, a real Redis.

- The poison request (``top_k`` of 2**63) gets one clear 400 at the gateway, and again from a worker
  when it is written to the request stream directly; a Batch job with poison lines fails those lines
  alone. Both workers stay alive and go on serving.
- An 8 s SIGSTOP of the worker holding a stream, and a 30 s ``DEBUG SLEEP`` of Redis under load:
  no process exits, and every stream completes with exactly the text of an uninterrupted run.
"""

from __future__ import annotations

import io
import json
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import httpx
import openai
import pytest
import redis

from busstop.stack import LocalStack
from shared import keys
from shared.messages import DATA_FIELD, GenerateRequest, ReplyKind, SamplingOptions, TrafficClass
from tests.gateway.batch_helpers import INTERNAL_KEY, PUBLIC_KEY, write_keys_file
from tests.stack import MODEL, heartbeats, reply_events, req_id_of_chunk, running_stack

NUM_TOKENS = 48
POEM = [{"role": "user", "content": "Write a long poem about rivers."}]


class Pool(NamedTuple):
    stack: LocalStack
    store: redis.Redis
    log_dir: Path


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    tmp = tmp_path_factory.mktemp("e2e-hardening")
    env = {
        "BUSSTOP_KEYS_FILE": str(write_keys_file(tmp / "keys.json")),
        "BUSSTOP_FILES_DIR": str(tmp / "files"),
        "BUSSTOP_BATCH_POLL_S": "0.2",
    }
    with running_stack(tmp / "logs", num_workers=2, env=env) as stack:
        store = stack.redis.client()
        assert len(heartbeats(store)) == 2
        yield Pool(stack, store, tmp / "logs")
        store.close()


def client(stack: LocalStack, key: str = PUBLIC_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=180)


def assert_pool_alive(stack: LocalStack, store: redis.Redis) -> None:
    assert [w.poll() for w in stack.workers] == [None, None]
    deadline = time.monotonic() + 10
    while len(heartbeats(store)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(heartbeats(store)) == 2
    reply = client(stack).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=4, temperature=0
    )
    assert reply.choices[0].message.content


def stream_text(stack: LocalStack, on_token: threading.Event | None = None) -> tuple[str, int, str]:
    """A greedy stream of NUM_TOKENS tokens; returns (text, completion tokens, req_id)."""
    stream = client(stack).chat.completions.create(
        model=MODEL, messages=POEM, max_tokens=NUM_TOKENS, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    parts: list[str] = []
    usage = 0
    req_id = ""
    for chunk in stream:
        req_id = req_id_of_chunk(chunk.id)
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
            if on_token is not None and len(parts) >= 4:
                on_token.set()
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
    return "".join(parts), usage, req_id


@pytest.fixture(scope="module")
def reference(pool: Pool) -> str:
    text, usage, _ = stream_text(pool[0])
    assert usage == NUM_TOKENS
    return text


def test_the_top_k_poison_gets_one_clear_error_and_both_workers_keep_serving(
    pool: Pool,
) -> None:
    stack, store, _ = pool
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
            "temperature": 1, "top_k": 2**63}  # fmt: skip
    response = httpx.post(
        f"{stack.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {PUBLIC_KEY}"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "top_k"

    # The same request written straight to the request stream, past the gateway: once per worker.
    stream = keys.request_stream(MODEL, TrafficClass.INTERACTIVE)
    for i in range(2):
        raw = json.loads(
            GenerateRequest(req_id=f"poison-{i}", model=MODEL, messages=None, prompt="hi",
                            sampling=SamplingOptions(max_tokens=5)).model_dump_json()
        )  # fmt: skip
        raw["sampling"].update(top_k=2**63, temperature=1.0)
        store.xadd(stream, {DATA_FIELD: json.dumps(raw)})
    for i in range(2):
        deadline = time.monotonic() + 30
        while not (events := reply_events(store, f"poison-{i}")) and time.monotonic() < deadline:
            time.sleep(0.1)
        (error,) = events
        assert error.kind is ReplyKind.ERROR and error.error is not None
        assert error.error.status == 400 and "top_k" in error.error.message
    assert_pool_alive(stack, store)


def test_poison_lines_fail_alone_in_a_batch_job(pool: Pool) -> None:
    stack, store, _ = pool
    internal = client(stack, INTERNAL_KEY)
    lines = []
    for i, extra in enumerate([{}, {"top_k": 2**63, "temperature": 1}, {}, {"seed": 2**70}, {}]):
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"Count to {i + 2}."}],
                "max_tokens": 4, "temperature": 0, **extra}  # fmt: skip
        lines.append(json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
                                 "body": body}))  # fmt: skip
    data = io.BytesIO("\n".join(lines).encode())
    uploaded = internal.files.create(file=("input.jsonl", data), purpose="batch")
    batch = internal.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 180
    while batch.status not in ("completed", "failed", "cancelled", "expired") and time.monotonic() < deadline:
        time.sleep(0.5)
        batch = internal.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 2)
    assert batch.output_file_id and batch.error_file_id
    outputs = [json.loads(line) for line in internal.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in outputs) == ["line-0", "line-2", "line-4"]
    error_lines = internal.files.content(batch.error_file_id).text.splitlines()
    errors = {e["custom_id"]: e for e in map(json.loads, error_lines)}
    assert sorted(errors) == ["line-1", "line-3"]
    assert errors["line-1"]["response"]["status_code"] == 400
    assert errors["line-1"]["response"]["body"]["error"]["param"] == "top_k"
    assert errors["line-3"]["response"]["body"]["error"]["param"] == "seed"
    assert_pool_alive(stack, store)


def holder_of(stack: LocalStack, store: redis.Redis, req_id: str) -> int:
    """The index in stack.workers of the worker that accepted ``req_id`` last."""
    worker_id = [e.worker_id for e in reply_events(store, req_id) if e.kind is ReplyKind.ACCEPTED][-1]
    (index,) = [i for i, w in enumerate(stack.workers) if f"-{w.pid}-" in str(worker_id)]
    return index


def latest_req_id(store: redis.Redis, before: set[str]) -> str:
    names = set(store.scan_iter(match=keys.reply_stream("*"))) - before
    (name,) = names
    return keys.req_id_of_reply_stream(str(name))


def test_an_8s_sigstop_of_the_holder_costs_latency_not_a_process(
    pool: Pool, reference: str
) -> None:
    stack, store, _ = pool
    before = set(store.scan_iter(match=keys.reply_stream("*")))
    started = threading.Event()
    with ThreadPoolExecutor(1) as executor:
        result = executor.submit(stream_text, stack, started)
        assert started.wait(60)
        holder = stack.workers[holder_of(stack, store, latest_req_id(store, before))]
        holder.send_signal(signal.SIGSTOP)
        time.sleep(8)
        holder.send_signal(signal.SIGCONT)
        text, usage, req_id = result.result(timeout=180)
    assert (text, usage) == (reference, NUM_TOKENS)
    events = reply_events(store, req_id)
    assert [e.seq for e in events] == list(range(len(events)))  # the paused worker wrote nothing stale
    assert_pool_alive(stack, store)


def test_a_30s_redis_stall_under_load_costs_latency_not_a_process(
    pool: Pool, reference: str
) -> None:
    stack, store, _ = pool
    started = [threading.Event() for _ in range(3)]
    with ThreadPoolExecutor(3) as executor:
        results = [executor.submit(stream_text, stack, event) for event in started]
        assert all(event.wait(120) for event in started)
        sleeper = redis.Redis.from_url(stack.redis.url, socket_timeout=60)
        sleeper.execute_command("DEBUG", "SLEEP", "30")  # Redis answers nobody for 30 s
        sleeper.close()
        outcomes = [r.result(timeout=300) for r in results]
    for text, usage, _ in outcomes:
        assert (text, usage) == (reference, NUM_TOKENS)
    assert stack.gateway is not None and stack.gateway.poll() is None
    assert_pool_alive(stack, store)


def test_no_worker_log_shows_a_crash(pool: Pool) -> None:
    logs = sorted(pool.log_dir.glob("worker-*.log"))
    assert len(logs) == 2
    for log in logs:
        text = log.read_text()
        assert "loop failed" not in text and "engine step failed" not in text, log
