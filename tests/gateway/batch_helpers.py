"""Helpers of the Files/Batch API tests: keys, settings, input files, waiting for a batch."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.batch.config import get_batch_settings
from gateway.core.auth import hash_key
from shared import keys
from shared.messages import TrafficClass

INTERNAL_KEY = "internal-key"
INTERNAL_TENANT = "research"
INTERNAL = {"Authorization": f"Bearer {INTERNAL_KEY}"}
PUBLIC_KEY = "public-key"
CHAT = "/v1/chat/completions"


def write_keys_file(path: Path) -> Path:
    entries = [
        {"sha256": hash_key(INTERNAL_KEY), "tenant": INTERNAL_TENANT, "traffic_class": "internal"},
        {"sha256": hash_key(PUBLIC_KEY), "tenant": "chat", "traffic_class": "public"},
    ]
    path.write_text(json.dumps({"keys": entries}))
    return path


def batch_stream(model: str) -> str:
    """The request stream the internal key's batch lines wait on: its tenant's."""
    return keys.request_stream(model, TrafficClass.BATCH, 0, INTERNAL_TENANT)


def batch_env(monkeypatch: pytest.MonkeyPatch, files_dir: Path, **overrides: object) -> None:
    """Batch settings for tests: short polls and leases, a small window."""
    values: dict[str, object] = {
        "files_dir": files_dir,
        "batch_poll_s": 0.05,
        "batch_lease_s": 1.0,
        "batch_window": 4,
        "batch_cancel_grace_s": 10,
    }
    values.update(overrides)
    for name, value in values.items():
        monkeypatch.setenv(f"BUSSTOP_{name.upper()}", str(value))
    get_batch_settings.cache_clear()


def chat_line(custom_id: str, content: str = "hello there", model: str = "tiny", **body: Any) -> str:
    payload = {"model": model, "messages": [{"role": "user", "content": content}], **body}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT, "body": payload})


async def upload(client: httpx.AsyncClient, text: str, key: str = INTERNAL_KEY) -> httpx.Response:
    return await client.post(
        "/v1/files",
        files={"file": ("input.jsonl", text.encode(), "application/jsonl")},
        data={"purpose": "batch"},
        headers={"Authorization": f"Bearer {key}"},
    )


async def create_batch(client: httpx.AsyncClient, text: str) -> dict[str, Any]:
    uploaded = await upload(client, text)
    assert uploaded.status_code == 200, uploaded.text
    created = await client.post(
        "/v1/batches",
        json={"input_file_id": uploaded.json()["id"], "endpoint": CHAT, "completion_window": "24h"},
        headers=INTERNAL,
    )
    assert created.status_code == 200, created.text
    return dict(created.json())


async def wait_batch(
    client: httpx.AsyncClient, batch_id: str, statuses: tuple[str, ...], min_completed: int = 0
) -> dict[str, Any]:
    """Poll the batch until its status is one of ``statuses`` and it has ``min_completed`` results."""
    while True:
        response = await client.get(
            f"/v1/batches/{batch_id}", headers={"Authorization": f"Bearer {INTERNAL_KEY}"}
        )
        assert response.status_code == 200, response.text
        batch = dict(response.json())
        if batch["status"] in statuses and batch["request_counts"]["completed"] >= min_completed:
            return batch
        await asyncio.sleep(0.05)


async def file_lines(client: httpx.AsyncClient, file_id: str) -> list[dict[str, Any]]:
    response = await client.get(
        f"/v1/files/{file_id}/content", headers={"Authorization": f"Bearer {INTERNAL_KEY}"}
    )
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]
