"""Bad requests get OpenAI-shaped 4xx/5xx answers from the real app, never a 500."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from busstop.redis_server import free_port
from gateway.main import create_app
from tests.gateway.conftest import API_KEY, make_settings, running
from tests.gateway.fake_worker import TOO_LONG, FakeWorker

CHAT = "/v1/chat/completions"
JSON = {"content-type": "application/json"}


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
        (chat(n=0), "n"),
        (chat(n=17), "n"),
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


# Hostile chat bodies: (body, the param the 400 must name). Each would reach a worker without a bound.
HOSTILE_CHAT = [
    (chat(top_k=2**63, temperature=1), "top_k"),
    (chat(top_k=-2), "top_k"),
    (chat(seed=2**70), "seed"),
    (chat(seed=-(2**64)), "seed"),
    (chat(repetition_penalty=0), "repetition_penalty"),
    (chat(repetition_penalty=1000), "repetition_penalty"),
    (chat(temperature=2.5), "temperature"),
    (chat(temperature=-0.1), "temperature"),
    (chat(presence_penalty=3), "presence_penalty"),
    (chat(frequency_penalty=-2.5), "frequency_penalty"),
    (chat(min_p=1.5), "min_p"),
    (chat(min_tokens=-1), "min_tokens"),
    (chat(min_tokens=2**40), "min_tokens"),
    (chat(max_tokens=2**40), "max_tokens"),
    (chat(max_completion_tokens=2**63), "max_completion_tokens"),
    (chat(logprobs=True, top_logprobs=21), "top_logprobs"),
    (chat(top_logprobs=5), "top_logprobs"),
    (chat(logit_bias={"x": 5}), "logit_bias"),
    (chat(logit_bias={"1": 101}), "logit_bias[1]"),
    (chat(logit_bias={str(2**40): 1}), "logit_bias"),
    (chat(tools=[{"type": "function", "function": {}}]), "tools[0].function.name"),
    (chat(tool_choice="auto"), "tool_choice"),
    (chat(tool_choice={"type": "function", "function": {"name": "f"}}), "tool_choice"),
    (chat(response_format={"type": "xml"}), "response_format"),
    (chat(stop=[str(i) for i in range(17)]), "stop"),
    (chat(stop="x" * 2000), "stop"),
    (chat(stop="\ud800"), "stop"),
    (chat(stop=["ok", "\udfff"]), "stop[1]"),
    (chat(messages=[{"role": "user", "content": "a\ud800b"}]), "messages[0].content"),
    (chat(messages=[{"role": "user", "content": [{"type": "text", "text": "\udc00"}]}]),
     "messages[0].content[0].text"),
    (chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     "messages[0].content[0].type"),
    (chat(messages=[{"role": "user", "content": "hi", "name": "\ud800"}]), "messages[0].name"),
    (chat(messages=[{"content": "hi"}]), "messages[0].role"),
    (chat(messages=[{"role": "user", "content": 42}]), "messages[0].content"),
    (chat(model="\ud800"), "model"),
    (chat(model=""), "model"),
    (chat(model="m" * 1_000_000), "model"),
    (chat(user="\udfff"), "user"),
    (chat(stop_token_ids=[-1]), "stop_token_ids[0]"),
    (chat(stop_token_ids=[2**40]), "stop_token_ids[0]"),
    (chat(priority=2**40), "priority"),
    (chat(stream_options="x"), "stream_options"),
    (chat(ignore_eos="maybe"), "ignore_eos"),
    (chat(logprobs=5), "logprobs"),
]

# Hostile legacy completion bodies.
HOSTILE_COMPLETION = [
    ({"model": "tiny", "prompt": "\ud800"}, "prompt"),
    ({"model": "tiny", "prompt": [-1, 5]}, "prompt[0]"),
    ({"model": "tiny", "prompt": [[2**40]]}, "prompt[0][0]"),
    ({"model": "tiny", "prompt": "x", "logprobs": 21}, "logprobs"),
    ({"model": "tiny", "prompt": "x", "echo": True}, "echo"),
    ({"model": "tiny", "prompt": "x", "suffix": "y"}, "suffix"),
    ({"model": "tiny", "prompt": "x", "top_k": 2**63}, "top_k"),
    ({"model": "tiny", "prompt": "x", "seed": 2**70}, "seed"),
    ({"model": "tiny", "prompt": "x", "max_tokens": -5}, "max_tokens"),
    ({"model": "tiny"}, "prompt"),
]


@pytest.mark.parametrize(("body", "param"), HOSTILE_CHAT)
async def test_hostile_chat_bodies_are_400_naming_the_param(
    client: httpx.AsyncClient, body: dict[str, object], param: str
) -> None:
    content = json.dumps(body).encode()  # json.dumps keeps "\ud800" escapes: a lone surrogate on the wire
    response = await client.post(CHAT, content=content, headers={"content-type": "application/json"})
    error = assert_openai_error(response, 400)
    assert error["param"] == param
    assert len(response.content) < 2000  # nothing the client sent is echoed back at length


@pytest.mark.parametrize(("body", "param"), HOSTILE_COMPLETION)
async def test_hostile_completion_bodies_are_400_naming_the_param(
    client: httpx.AsyncClient, body: dict[str, object], param: str
) -> None:
    content = json.dumps(body).encode()
    response = await client.post("/v1/completions", content=content, headers=JSON)
    assert assert_openai_error(response, 400)["param"] == param


@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN"])
@pytest.mark.parametrize("field", ["repetition_penalty", "temperature", "top_p", "presence_penalty", "min_p"])
async def test_non_finite_numbers_are_400(client: httpx.AsyncClient, literal: str, field: str) -> None:
    content = f'{{"model": "tiny", "messages": [{{"role": "user", "content": "hi"}}], "{field}": {literal}}}'
    response = await client.post(CHAT, content=content.encode(), headers={"content-type": "application/json"})
    assert assert_openai_error(response, 400)["param"] == field


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe{}", b'{"model": "tiny", "messages": [{"role": "user", "content": "\xc3("}]}', b"", b"null",
     b"42"],
    ids=["bom-garbage", "invalid-utf8", "empty", "null", "number"],
)
async def test_bodies_that_are_not_a_json_object_are_400(client: httpx.AsyncClient, content: bytes) -> None:
    response = await client.post(CHAT, content=content, headers={"content-type": "application/json"})
    assert_openai_error(response, 400)


async def test_a_key_in_the_query_string_is_refused(client: httpx.AsyncClient) -> None:
    for name in ("api_key", "key", "access_token"):
        response = await client.get(f"/v1/models?{name}={API_KEY}")
        assert assert_openai_error(response, 401, "key_in_query")
        assert API_KEY not in response.text


async def test_a_body_over_the_limit_is_413_before_it_is_read(redis_url: str) -> None:
    app = create_app(make_settings(redis_url, max_body_bytes=4096))
    async with running(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        client = httpx.AsyncClient(transport=transport, base_url="http://gateway", headers=headers)
        async with client:
            big = chat(messages=[{"role": "user", "content": "x" * 5000}])
            assert_openai_error(await client.post(CHAT, json=big), 413, "request_too_large")

            async def chunked():  # no content-length: counted as it arrives
                yield json.dumps(big).encode()

            response = await client.post(CHAT, content=chunked(), headers=JSON)
            assert_openai_error(response, 413, "request_too_large")


async def test_a_prompt_far_over_the_window_is_refused_before_it_is_queued(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    async with FakeWorker(redis_url, max_model_len=64, max_token_bytes=16) as worker:
        huge = chat(messages=[{"role": "user", "content": "word " * 1_000_000}])  # 5 MB
        error = assert_openai_error(await client.post(CHAT, json=huge), 400, "context_length_exceeded")
        assert error["param"] == "messages" and "at least" in str(error["message"])
        ids = {"model": "tiny", "prompt": list(range(64))}
        response = await client.post("/v1/completions", json=ids)
        error = assert_openai_error(response, 400, "context_length_exceeded")
        assert error["param"] == "prompt"
        text = {"model": "tiny", "prompt": "y" * (64 * 16)}
        assert_openai_error(await client.post("/v1/completions", json=text), 400, "context_length_exceeded")
        assert worker.requests == []  # none of them was queued


async def test_an_unknown_models_long_name_is_not_echoed(client: httpx.AsyncClient, redis_url: str) -> None:
    async with FakeWorker(redis_url, model="tiny"):
        response = await client.post(CHAT, json=chat(model="z" * 200))
    error = assert_openai_error(response, 404, "model_not_found")
    assert len(str(error["message"])) < 200


async def test_a_wrong_method_is_405_with_allow(client: httpx.AsyncClient) -> None:
    for method in ("GET", "PUT", "DELETE", "OPTIONS"):
        response = await client.request(method, CHAT)
        assert_openai_error(response, 405)
        assert response.headers["allow"] == "POST"


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
