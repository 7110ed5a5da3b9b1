"""GET /v1/models from live heartbeats; /health and /ready."""

from __future__ import annotations

import httpx

from gateway.main import create_app
from tests.gateway.conftest import API_KEY, make_settings, running
from tests.gateway.fake_worker import FakeWorker


async def test_models_lists_the_models_with_live_workers(client: httpx.AsyncClient, redis_url: str) -> None:
    async with (
        FakeWorker(redis_url, model="tiny", worker_id="a", max_model_len=64),
        FakeWorker(redis_url, model="tiny", worker_id="b", max_model_len=128),
        FakeWorker(redis_url, model="small", worker_id="c", max_model_len=256),
    ):
        response = await client.get("/v1/models")
        one = await client.get("/v1/models/small")
        missing = await client.get("/v1/models/nope")
    assert response.status_code == 200
    data = response.json()["data"]
    assert [(m["id"], m["object"], m["owned_by"]) for m in data] == [
        ("small", "model", "busstop"),
        ("tiny", "model", "busstop"),
    ]
    assert [m["max_model_len"] for m in data] == [256, 64]
    assert [m["num_workers"] for m in data] == [1, 2]
    assert one.status_code == 200 and one.json() == data[0]
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


async def test_health_needs_nothing_and_ready_needs_a_worker(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    not_ready = await client.get("/ready")
    assert not_ready.status_code == 503 and not_ready.json()["redis"] is True
    async with FakeWorker(redis_url):
        ready = await client.get("/ready")
    assert ready.status_code == 200 and ready.json()["models"] == {"tiny": 1}


async def test_ready_needs_every_configured_model(redis_url: str) -> None:
    app = create_app(make_settings(redis_url, models="tiny, big"))
    async with (
        running(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://g",
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as http,
        FakeWorker(redis_url, model="tiny"),
    ):
        response = await http.get("/ready")
    assert response.status_code == 503
    assert response.json()["models"] == {"tiny": 1, "big": 0}
    assert "big" in response.json()["reason"]
