"""Redis SIGKILLed and started again on its append-only file: accepted work survives, service resumes.

The local stack runs Redis with ``appendonly yes`` and ``appendfsync everysec``: what was written
more than a second before the crash is on disk.
"""

from __future__ import annotations

import io
import json
import statistics
import time
from collections.abc import Iterator

import openai
import pytest

from busstop.stack import LocalStack
from tests.stack import MODEL, running_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running_stack(tmp_path_factory.mktemp("faults-redis")) as running:
        yield running


def chat_latency_s(client: openai.OpenAI) -> float:
    started = time.monotonic()
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0
    )
    assert reply.choices[0].message.content
    return time.monotonic() - started


def test_a_batch_job_and_its_files_survive_and_the_next_request_is_served_in_normal_time(
    stack: LocalStack,
) -> None:
    public = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.api_key, max_retries=0)
    internal = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.internal_key, max_retries=0)
    lines = [
        json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": MODEL, "messages": [{"role": "user", "content": f"Count to {i + 2}."}],
                             "max_tokens": 4, "temperature": 0}})
        for i in range(3)
    ]  # fmt: skip
    data = io.BytesIO("\n".join(lines).encode())
    uploaded = internal.files.create(file=("input.jsonl", data), purpose="batch")
    batch = internal.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                    completion_window="24h")  # fmt: skip
    deadline = time.monotonic() + 120
    while batch.status != "completed" and time.monotonic() < deadline:
        time.sleep(0.5)
        batch = internal.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.output_file_id
    output = internal.files.content(batch.output_file_id).text
    normal_s = statistics.median(chat_latency_s(public) for _ in range(3))
    time.sleep(1.5)  # everysec: the last writes reach the disk

    stack.redis.kill()
    time.sleep(2.0)
    stack.redis.start()
    after_s = chat_latency_s(public)  # at once: no waiting for the stack to notice
    print(f"normal {normal_s:.2f} s, first request after the restart {after_s:.2f} s")
    assert after_s <= 2 * normal_s

    survived = internal.batches.retrieve(batch.id)
    assert survived.status == "completed" and survived.output_file_id == batch.output_file_id
    assert internal.files.retrieve(uploaded.id).id == uploaded.id
    assert internal.files.content(batch.output_file_id).text == output
