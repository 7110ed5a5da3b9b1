"""Bad requests get OpenAI-shaped 4xx/5xx answers from the real app, never a 500."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway.main import create_app
from shared.redis_server import free_port
from tests.gateway.conftest import API_KEY, make_settings, running
from tests.gateway.fake_worker import TOO_LONG, FakeWorker

CHAT = "/v1/chat/completions"


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def chat(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    body.update(overrides)
    return body


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        CHAT, content=b'{"model": "tiny", "messages": [', headers={"content-type": "application/json"}
    )
    assert_openai_error(response, 400, "invalid_json")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat(temperature="hot"), "temperature"),
        (chat(messages="hi"), "messages"),
        (chat(max_tokens="many"), "max_tokens"),
        (chat(stream="yes please"), "stream"),
        (chat(max_tokens=0), "max_tokens"),
        (chat(max_completion_tokens=-3), "max_completion_tokens"),
        (chat(messages=[]), "messages"),
        (chat(messages=[{"role": "wizard", "content": "hi"}]), "messages[0].role"),
        (chat(n=2), "n"),
        (chat(top_p=0), "top_p"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
    ],
)
async def test_invalid_chat_fields_are_400(
    client: httpx.AsyncClient, body: dict[str, object], param: str
) -> None:
    error = assert_openai_error(await client.post(CHAT, json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


async def test_a_body_that_is_not_an_object_is_400(client: httpx.AsyncClient) -> None:
    assert_openai_error(await client.post(CHAT, json=[1, 2]), 400)


async def test_invalid_completion_fields_are_400(client: httpx.AsyncClient) -> None:
    for body in (
        {"model": "tiny", "prompt": []},
        {"model": "tiny", "prompt": ["a", "b"]},
        {"model": "tiny", "prompt": 3},
    ):
        assert_openai_error(await client.post("/v1/completions", json=body), 400)
    error = assert_openai_error(
        await client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "echo": True}), 400
    )
    assert "echo" in str(error["message"])


async def test_unknown_fields_are_ignored(client: httpx.AsyncClient, redis_url: str) -> None:
    async with FakeWorker(redis_url):
        response = await client.post(CHAT, json=chat(frobnicate=True, metadata={"a": "b"}))
    assert response.status_code == 200, response.text


async def test_unknown_model_is_404(client: httpx.AsyncClient, redis_url: str) -> None:
    async with FakeWorker(redis_url, model="tiny"):
        response = await client.post(CHAT, json=chat(model="no-such-model"))
    error = assert_openai_error(response, 404, "model_not_found")
    assert error["param"] == "model"


async def test_prompt_over_the_context_window_is_400_in_both_modes(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    body = chat(messages=[{"role": "user", "content": TOO_LONG}])
    async with FakeWorker(redis_url):
        assert_openai_error(await client.post(CHAT, json=body), 400, "context_length_exceeded")
        assert_openai_error(
            await client.post(CHAT, json={**body, "stream": True}), 400, "context_length_exceeded"
        )


async def test_unknown_route_and_method_are_openai_shaped(client: httpx.AsyncClient) -> None:
    assert_openai_error(await client.get("/v1/nothing-here"), 404)
    assert_openai_error(await client.get(CHAT), 405)


async def test_redis_unreachable_is_503(redis_url: str) -> None:
    app = create_app(make_settings(f"redis://127.0.0.1:{free_port()}/0"))
    async with running(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gateway", headers=headers
        ) as client:
            error = assert_openai_error(await client.post(CHAT, json=chat()), 503, "redis_unavailable")
            assert "Redis" in str(error["message"])
            assert (await client.get("/ready")).status_code == 503
            assert (await client.get("/health")).status_code == 200


async def test_no_live_worker_is_503_after_the_bounded_wait(redis_url: str) -> None:
    app = create_app(make_settings(redis_url, models=["tiny"], worker_wait_s=0.3))
    async with running(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gateway", headers=headers
        ) as client:
            assert_openai_error(await client.post(CHAT, json=chat()), 503, "no_live_worker")


async def test_a_worker_that_starts_during_the_wait_serves_the_request(redis_url: str) -> None:
    app = create_app(make_settings(redis_url, models=["tiny"], worker_wait_s=30))
    async with running(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gateway", headers=headers
        ) as client:
            pending = asyncio.create_task(client.post(CHAT, json=chat()))
            await asyncio.sleep(0.2)
            assert not pending.done()
            async with FakeWorker(redis_url):
                response = await pending
    assert response.status_code == 200, response.text


async def test_a_model_whose_workers_are_gone_is_503_not_404(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    async with FakeWorker(redis_url, model="tiny"):
        pass  # its streams and consumer group stay behind, its heartbeat is gone
    assert_openai_error(await client.post(CHAT, json=chat()), 503, "no_live_worker")
