"""The real stack for end-to-end tests: redis-server, SmolLM2 worker processes, the gateway under uvicorn.

One stack serves the whole session (loading the model takes seconds); tests that kill workers
start their own. Heartbeats and reclaim run on their defaults: a dead worker's requests move in ~2 s.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
import redis
from openai.types.chat import ChatCompletionChunk

from busstop.stack import DEFAULT_MODEL, LocalStack
from shared import keys
from shared.messages import ReplyEvent, WorkerHeartbeat

MODEL = DEFAULT_MODEL
MAX_MODEL_LEN = 512
READY_TIMEOUT_S = 240.0  # model loads are slow on a busy 2-core machine

# `BUSSTOP_TEST_REDIS_CLUSTER=1 pytest tests/e2e` runs the end-to-end suite on a local 6-node Redis Cluster.
ON_CLUSTER = os.environ.get("BUSSTOP_TEST_REDIS_CLUSTER", "") not in ("", "0", "false")

E2E_ENV = {
    # float32 everywhere: the suite compares texts across resumes and batchings, which bf16's rounding
    # may change (``dtype: auto`` would pick bf16 on CPUs with native bf16).
    "BUSSTOP_MODEL_DTYPE": "float32",
    "BUSSTOP_MODEL_MAX_MODEL_LEN": str(MAX_MODEL_LEN),
    "BUSSTOP_MODEL_KV_CACHE_BYTES": str(64 * 1024 * 1024),
    "BUSSTOP_WORKER_REFRESH_S": "0.25",
    "BUSSTOP_LOG_FORMAT": "text",
    "TOKENIZERS_PARALLELISM": "false",
    **({"BUSSTOP_REDIS_CLUSTER": "true"} if ON_CLUSTER else {}),  # for `busstop up`, too
}


@contextmanager
def running_stack(
    log_dir: Path, num_workers: int = 1, env: dict[str, str] | None = None, redis_cluster: bool = ON_CLUSTER
) -> Iterator[LocalStack]:
    """A started stack with all ``num_workers`` workers live (logs in ``log_dir``), stopped on exit."""
    env = {**E2E_ENV, **(env or {})}
    stack = LocalStack(port=0, env=env, log_dir=log_dir, num_workers=num_workers, redis_cluster=redis_cluster)
    stack.start(timeout_s=READY_TIMEOUT_S)
    try:
        client = stack.redis.client()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(heartbeats(client)) < num_workers and time.monotonic() < deadline:
            time.sleep(0.25)
        client.close()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running_stack(tmp_path_factory.mktemp("e2e-stack")) as running:
        yield running


@pytest.fixture(scope="session")
def store(stack: LocalStack) -> Iterator[redis.Redis]:
    """The stack's Redis, to look at what workers and the gateway wrote."""
    client = stack.redis.client()
    yield client
    client.close()


def heartbeats(client: redis.Redis) -> list[WorkerHeartbeat]:
    names = list(client.scan_iter(match=keys.worker_pattern(MODEL)))
    values = client.mget(names) if names else []
    return [WorkerHeartbeat.model_validate_json(v) for v in values if v is not None]


def reply_events(client: redis.Redis, req_id: str) -> list[ReplyEvent]:
    return [ReplyEvent.model_validate_json(f["data"]) for _, f in client.xrange(keys.reply_stream(req_id))]


def long_stream(stack: LocalStack, num_tokens: int) -> openai.Stream[ChatCompletionChunk]:
    """A streamed greedy chat completion of exactly ``num_tokens`` tokens, with a final usage chunk."""
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.api_key, max_retries=0)
    return client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long poem about rivers."}],
        max_tokens=num_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )


def req_id_of_chunk(chunk_id: str) -> str:
    """The gateway names responses ``chatcmpl-<req_id>`` / ``cmpl-<req_id>``."""
    return chunk_id.split("-", 1)[1]
