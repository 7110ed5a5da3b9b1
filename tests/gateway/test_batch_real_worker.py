"""The Batch API against a real worker: the worker service and engine on a tiny random Llama, in
process, serving the batch stream the gateway's batch runner feeds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import transformers
from fastapi import FastAPI
from redis.asyncio import Redis

from gateway.main import create_app
from shared import keys
from shared.messages import WorkerHeartbeat
from tests.gateway.batch_helpers import (
    INTERNAL,
    batch_env,
    batch_stream,
    file_lines,
    wait_batch,
    write_keys_file,
)
from tests.gateway.conftest import make_settings
from tests.worker.tiny_llama import make_engine, make_hf_model
from worker.loader.load import load_tokenizer, resolve_path
from worker.loader.settings import ModelSettings
from worker.service.service import WorkerService
from worker.service.settings import WorkerSettings

MODEL = "tiny"
COMPLETIONS = "/v1/completions"
FINAL = ("completed", "failed", "cancelled", "expired")


@pytest.fixture(scope="module")
def hf_model() -> transformers.PreTrainedModel:
    return make_hf_model()


@pytest.fixture
async def worker(redis_url: str, hf_model: transformers.PreTrainedModel) -> AsyncIterator[WorkerService]:
    redis = Redis.from_url(redis_url, decode_responses=True)
    settings = WorkerSettings(
        redis_url=redis_url, worker_id="w-batch", heartbeat_interval_s=0.2, grace_period_s=0.0
    )
    engine = make_engine(hf_model, max_num_seqs=8, num_pages=512, max_model_len=256)
    # ids below 256 decode to text: enough for a tiny model
    tokenizer = load_tokenizer(resolve_path("default"), ModelSettings().tokenizer_cache_dir)
    service = WorkerService(settings, redis, MODEL, engine, tokenizer, max_model_len=256, vocab_size=256)
    run = asyncio.create_task(service.run())
    try:
        yield service
    finally:
        service.stop()
        await asyncio.wait_for(run, 30)
        await redis.aclose()


@pytest.fixture
async def client(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    batch_env(monkeypatch, tmp_path / "files", batch_window=8)
    app: FastAPI = create_app(
        make_settings(redis_url, dev_api_key=None, keys_file=write_keys_file(tmp_path / "k.json"))
    )
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gw", headers=INTERNAL) as client,
    ):
        yield client


def completion_line(custom_id: str, prompt: list[int], max_tokens: int = 4) -> str:
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
    }
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": COMPLETIONS, "body": body})


async def test_batch_of_50_with_3_invalid_lines_on_a_real_worker(
    client: httpx.AsyncClient, worker: WorkerService
) -> None:
    lines = [completion_line(f"req-{i}", [1 + i, 2, 3, 4]) for i in range(50)]
    lines[3] = '{"custom_id": "req-3", "method": "POST"'  # truncated JSON
    lines[30] = json.dumps({"method": "POST", "url": COMPLETIONS, "body": {}})  # no custom_id
    lines[44] = completion_line("req-44", [1, 2]).replace('"POST"', '"GET"')
    uploaded = await client.post(
        "/v1/files", files={"file": ("in.jsonl", "\n".join(lines).encode())}, data={"purpose": "batch"}
    )
    assert uploaded.status_code == 200, uploaded.text
    created = await client.post(
        "/v1/batches", json={"input_file_id": uploaded.json()["id"], "endpoint": COMPLETIONS}
    )
    assert created.status_code == 200, created.text
    done = await wait_batch(client, created.json()["id"], FINAL)

    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": 50, "completed": 47, "failed": 3}
    outputs = await file_lines(client, done["output_file_id"])
    errors = await file_lines(client, done["error_file_id"])
    assert [o["custom_id"] for o in outputs] == [f"req-{i}" for i in range(50) if i not in (3, 30, 44)]
    assert [e["custom_id"] for e in errors] == [None, None, "req-44"]
    assert [e["error"]["code"] for e in errors] == [
        "invalid_json_line",
        "missing_custom_id",
        "invalid_method",
    ]
    for output in outputs:
        body = output["response"]["body"]
        assert output["response"]["status_code"] == 200 and body["object"] == "text_completion"
        assert body["usage"] == {
            "prompt_tokens": 4,
            "completion_tokens": 4,
            "total_tokens": 8,
            "prompt_tokens_details": {
                "cached_tokens": body["usage"]["prompt_tokens_details"]["cached_tokens"]
            },
        }
        assert body["choices"][0]["finish_reason"] == "length"


async def test_cancel_mid_batch_on_a_real_worker(
    client: httpx.AsyncClient, worker: WorkerService, redis_url: str
) -> None:
    lines = [completion_line(f"req-{i}", [1 + i, 2, 3], max_tokens=60) for i in range(40)]
    uploaded = await client.post(
        "/v1/files", files={"file": ("in.jsonl", "\n".join(lines).encode())}, data={"purpose": "batch"}
    )
    created = await client.post(
        "/v1/batches", json={"input_file_id": uploaded.json()["id"], "endpoint": COMPLETIONS}
    )
    batch_id = created.json()["id"]
    await wait_batch(client, batch_id, ("in_progress",), min_completed=1)
    assert (await client.post(f"/v1/batches/{batch_id}/cancel")).status_code == 200
    done = await wait_batch(client, batch_id, FINAL)

    assert done["status"] == "cancelled"
    completed = done["request_counts"]["completed"]
    assert 1 <= completed < 40 and done["request_counts"]["failed"] == 0
    outputs = await file_lines(client, done["output_file_id"])
    assert len(outputs) == completed
    assert all(o["response"]["body"]["usage"]["completion_tokens"] == 60 for o in outputs)
    # The lines in flight at the cancel were aborted in the engine: it empties (the wait is bounded by
    # the test timeout), far before the 40 lines' worth of work is done.
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        while True:
            beat = WorkerHeartbeat.model_validate_json(
                await redis.get(keys.worker_key(MODEL, "w-batch")) or "{}"
            )
            if beat.num_running == 0 and beat.num_waiting == 0:
                break
            await asyncio.sleep(0.05)
        num_submitted = await redis.xlen(batch_stream(MODEL))
    finally:
        await redis.aclose()
    assert num_submitted < 40
