"""Files and Batch APIs end to end: the real gateway app and Redis, a worker serving the batch stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from gateway.main import create_app
from shared.messages import TrafficClass
from tests.gateway.batch_helpers import (
    CHAT,
    INTERNAL_KEY,
    PUBLIC_KEY,
    batch_env,
    batch_stream,
    chat_line,
    create_batch,
    file_lines,
    upload,
    wait_batch,
    write_keys_file,
)
from tests.gateway.conftest import make_settings
from tests.gateway.fake_worker import FakeWorker

FINAL = ("completed", "failed", "cancelled", "expired")


@pytest.fixture
async def app(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FastAPI]:
    batch_env(monkeypatch, tmp_path / "files", max_file_bytes=16_000)
    settings = make_settings(redis_url, dev_api_key=None, keys_file=write_keys_file(tmp_path / "keys.json"))
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {INTERNAL_KEY}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway", headers=headers) as client:
        yield client


async def test_file_upload_get_content_delete(client: httpx.AsyncClient) -> None:
    text = chat_line("a") + "\n" + chat_line("b") + "\n"
    uploaded = await upload(client, text)
    assert uploaded.status_code == 200, uploaded.text
    obj = uploaded.json()
    assert obj["object"] == "file" and obj["purpose"] == "batch" and obj["bytes"] == len(text)
    assert (await client.get(f"/v1/files/{obj['id']}")).json() == obj
    assert (await client.get(f"/v1/files/{obj['id']}/content")).text == text
    deleted = await client.delete(f"/v1/files/{obj['id']}")
    assert deleted.json() == {"id": obj["id"], "object": "file", "deleted": True}
    assert (await client.get(f"/v1/files/{obj['id']}")).status_code == 404


async def test_file_over_the_size_limit_is_413(client: httpx.AsyncClient) -> None:
    response = await upload(client, "\n".join(chat_line(f"line-{i}") for i in range(200)))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"


async def test_public_key_gets_403_from_files_and_batches(client: httpx.AsyncClient) -> None:
    public = {"Authorization": f"Bearer {PUBLIC_KEY}"}
    assert (await upload(client, chat_line("a"), key=PUBLIC_KEY)).status_code == 403
    assert (await client.get("/v1/batches", headers=public)).status_code == 403
    created = await client.post(
        "/v1/batches", json={"input_file_id": "file-x", "endpoint": CHAT}, headers=public
    )
    assert created.status_code == 403
    assert created.json()["error"]["code"] == "internal_key_required"


async def test_bad_batch_requests_are_clear_errors(client: httpx.AsyncClient) -> None:
    file_id = (await upload(client, chat_line("a"))).json()["id"]
    wrong_endpoint = await client.post(
        "/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/embeddings"}
    )
    assert wrong_endpoint.status_code == 400 and wrong_endpoint.json()["error"]["param"] == "endpoint"
    missing = await client.post("/v1/batches", json={"input_file_id": "file-nope", "endpoint": CHAT})
    assert missing.status_code == 404
    window = await client.post(
        "/v1/batches", json={"input_file_id": file_id, "endpoint": CHAT, "completion_window": "soon"}
    )
    assert window.status_code == 400
    assert (await client.get("/v1/batches/batch_nope")).status_code == 404


async def test_batch_of_50_with_3_invalid_lines(client: httpx.AsyncClient, redis_url: str) -> None:
    lines = [chat_line(f"req-{i}", f"question number {i}") for i in range(50)]
    lines[7] = "{not json"
    lines[21] = chat_line("req-5")  # a duplicate custom_id
    lines[40] = chat_line("req-40").replace(CHAT, "/v1/completions")  # not the batch's endpoint
    async with FakeWorker(redis_url, model="tiny") as worker:
        batch = await create_batch(client, "\n".join(lines) + "\n")
        assert batch["status"] == "validating" and batch["object"] == "batch"
        done = await wait_batch(client, batch["id"], FINAL)
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": 50, "completed": 47, "failed": 3}
    for stamp in ("in_progress_at", "finalizing_at", "completed_at"):
        assert done[stamp] is not None

    outputs = await file_lines(client, done["output_file_id"])
    errors = await file_lines(client, done["error_file_id"])
    expected_ok = [f"req-{i}" for i in range(50) if i not in (7, 21, 40)]
    assert [o["custom_id"] for o in outputs] == expected_ok
    assert [e["custom_id"] for e in errors] == [None, "req-5", "req-40"]
    assert [e["error"]["code"] for e in errors] == ["invalid_json_line", "duplicate_custom_id", "invalid_url"]
    first = outputs[0]
    assert set(first) == {"id", "custom_id", "response", "error"} and first["error"] is None
    assert first["response"]["status_code"] == 200
    assert first["response"]["request_id"] == first["id"]
    body = first["response"]["body"]
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "Hello, world!"
    assert body["usage"]["completion_tokens"] == 4

    # Each valid line went to the batch stream exactly once, in the batch class.
    assert sorted(worker.streams.values()) == [TrafficClass.BATCH] * 47
    assert len({r.req_id for r in worker.requests}) == 47
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        assert await redis.xlen(batch_stream("tiny")) == 47
        listed = (await client.get("/v1/batches")).json()
        assert [b["id"] for b in listed["data"]] == [batch["id"]] and not listed["has_more"]
    finally:
        await redis.aclose()


async def test_a_line_the_worker_refuses_goes_to_the_error_file(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    text = "\n".join([chat_line("ok"), chat_line("long", "<<too long>>"), chat_line("unknown", model="nope")])
    async with FakeWorker(redis_url, model="tiny"):
        batch = await create_batch(client, text)
        done = await wait_batch(client, batch["id"], FINAL)
    assert done["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
    errors = {e["custom_id"]: e for e in await file_lines(client, done["error_file_id"])}
    assert errors["long"]["response"]["status_code"] == 400
    assert errors["long"]["response"]["body"]["error"]["code"] == "context_length_exceeded"
    assert errors["unknown"]["response"]["status_code"] == 404


async def test_cancel_mid_batch(client: httpx.AsyncClient, redis_url: str) -> None:
    lines = [chat_line(f"req-{i}") for i in range(40)]
    async with FakeWorker(redis_url, model="tiny", delay_s=0.05) as worker:
        batch = await create_batch(client, "\n".join(lines))
        await wait_batch(client, batch["id"], ("in_progress",), min_completed=2)
        cancelled = await client.post(f"/v1/batches/{batch['id']}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] in ("cancelling", "cancelled")
        done = await wait_batch(client, batch["id"], FINAL)
        redis = Redis.from_url(redis_url, decode_responses=True)
        try:
            num_submitted = await redis.xlen(batch_stream("tiny"))
        finally:
            await redis.aclose()
    assert done["status"] == "cancelled" and done["cancelled_at"] is not None
    completed = done["request_counts"]["completed"]
    assert 2 <= completed < 40
    outputs = await file_lines(client, done["output_file_id"])
    assert len(outputs) == completed and all(o["response"]["status_code"] == 200 for o in outputs)
    # Submission stopped at the cancel: at most a window's worth of lines was in flight then, and
    # those the worker had started were told to abort.
    assert num_submitted <= completed + 4 + 4
    assert len(worker.requests) < 40
    assert (await client.post(f"/v1/batches/{batch['id']}/cancel")).json()["status"] == "cancelled"
