"""Resuming an SSE stream from its Last-Event-ID: GET .../{id}/stream or the same POST with the header.

The fake worker answers with fixed words on the real Redis; its reply streams stay there, so a stream
that was read to its end can be resumed after each of its events and must give exactly the rest.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic_core import from_json

from gateway.core.auth import hash_key
from gateway.main import create_app
from tests.gateway.conftest import API_KEY, ServerThread, make_settings, running
from tests.gateway.fake_worker import WORDS, FakeWorker

OTHER_KEY = "other-tenant-key"
CHAT = "/v1/chat/completions"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.fixture
async def client(redis_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    keys_file = tmp_path / "keys.json"
    entries = [{"sha256": hash_key(API_KEY), "tenant": "a"}, {"sha256": hash_key(OTHER_KEY), "tenant": "b"}]
    keys_file.write_text(json.dumps({"keys": entries}))
    settings = make_settings(redis_url, dev_api_key=None, keys_file=keys_file)
    async with running(create_app(settings)) as app:
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", headers=headers) as http:
            yield http


def events_of(body: str) -> list[str]:
    """The raw events of an SSE body, each with its blank line."""
    return [event + "\n\n" for event in body.removesuffix("\n\n").split("\n\n")]


def id_of(event: str) -> str:
    return event.split("\n")[0].removeprefix("id: ")


async def test_a_stream_resumed_after_any_of_its_events_gets_exactly_the_rest(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    async with FakeWorker(redis_url) as worker:
        whole = await client.post(CHAT, json={**BODY, "stream_options": {"include_usage": True}})
        assert whole.status_code == 200
        events = events_of(whole.text)
        assert events[-1] == "data: [DONE]\n\n" and len(events) == len(WORDS) + 4  # role, words, end, usage
        completion_id = id_of(events[0]).split(".")[0]
        url = f"{CHAT}/{completion_id}/stream"
        for cut in range(len(events) - 1):
            resumed = await client.get(url, headers={"Last-Event-ID": id_of(events[cut])})
            assert resumed.status_code == 200, resumed.text
            assert resumed.text == "".join(events[cut + 1 :]), f"after event {cut}"
            again = await client.post(CHAT, json=BODY, headers={"Last-Event-ID": id_of(events[cut])})
            assert again.text == resumed.text
        assert (await client.get(url)).text == whole.text  # no Last-Event-ID: the whole stream again
        assert len(worker.requests) == 1  # resuming runs nothing again


async def test_resumed_completion_logprobs_keep_their_offsets(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    body = {"model": "tiny", "prompt": "hi", "stream": True, "logprobs": 1, "max_tokens": len(WORDS)}
    async with FakeWorker(redis_url):
        whole = await client.post("/v1/completions", json=body)
        events = events_of(whole.text)
        completion_id = id_of(events[0]).split(".")[0]
        resumed = await client.get(
            f"/v1/completions/{completion_id}/stream", headers={"Last-Event-ID": id_of(events[1])}
        )
    assert resumed.text == "".join(events[2:])
    offsets = [from_json(e.split("data: ")[1])["choices"][0]["logprobs"]["text_offset"] for e in events[2:-2]]
    assert offsets == sorted(offsets) and offsets[0] == [len(WORDS[0]) + len(WORDS[1])]


async def test_each_of_n_choices_resumes_where_it_was(client: httpx.AsyncClient, redis_url: str) -> None:
    async with FakeWorker(redis_url):
        whole = await client.post(CHAT, json={**BODY, "n": 2})
        events = events_of(whole.text)[:-1]
        cut = len(events) // 2
        completion_id = id_of(events[0]).split(".")[0]
        resumed = await client.get(
            f"{CHAT}/{completion_id}/stream", headers={"Last-Event-ID": id_of(events[cut])}
        )
    texts = ["", ""]
    for event in events[: cut + 1] + events_of(resumed.text)[:-1]:
        choice = from_json(event.split("data: ")[1])["choices"][0]
        texts[choice["index"]] += choice["delta"].get("content") or ""
    assert texts == ["".join(WORDS)] * 2


async def test_only_the_streams_tenant_may_resume_it_and_bad_ids_are_refused(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    async with FakeWorker(redis_url):
        events = events_of((await client.post(CHAT, json=BODY)).text)
    completion_id = id_of(events[0]).split(".")[0]
    url = f"{CHAT}/{completion_id}/stream"
    other = await client.get(url, headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert other.status_code == 404 and other.json()["error"]["code"] == "stream_not_found"
    unknown = await client.get(f"{CHAT}/chatcmpl-nope/stream")
    assert unknown.status_code == 404
    malformed = await client.get(url, headers={"Last-Event-ID": "garbage"})
    assert malformed.status_code == 400 and malformed.json()["error"]["param"] == "Last-Event-ID"
    wrong_stream = await client.get(url, headers={"Last-Event-ID": "chatcmpl-other.3"})
    assert wrong_stream.status_code == 400
    as_completion = await client.get(f"/v1/completions/{completion_id}/stream")
    assert as_completion.status_code == 404


LONG_WORDS = tuple(f" w{i}" for i in range(60))  # within the fake model's 64-token window


async def read_until(response: httpx.Response, word: str) -> tuple[str, str]:
    """(text so far, id of its last event) once ``word`` has arrived."""
    text, last_id = "", ""
    async for line in response.aiter_lines():
        if line.startswith("id: "):
            last_id = line.removeprefix("id: ")
        elif line.startswith("data: {"):
            text += from_json(line.removeprefix("data: "))["choices"][0]["delta"].get("content") or ""
            if word in text:
                return text, last_id
    raise AssertionError(f"{word!r} never came")


def content_of(body: str) -> str:
    chunks = [from_json(e.split("data: ")[1]) for e in events_of(body)[:-1]]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)


async def test_a_stream_whose_client_left_runs_through_the_grace_then_is_cancelled(redis_url: str) -> None:
    settings = make_settings(redis_url, resume_grace_s=1.0)
    async with (
        FakeWorker(redis_url, words=LONG_WORDS, delay_s=0.05) as worker,
        ServerThread(create_app(settings)) as a,
    ):
        async with (
            httpx.AsyncClient(base_url=a.url, headers=HEADERS) as http,
            http.stream("POST", CHAT, json=BODY) as response,
        ):
            await read_until(response, " w3")
        req_id = worker.requests[0].req_id
        await asyncio.sleep(0.6)
        assert req_id not in worker.cancelled  # still in its grace
        for _ in range(150):
            if req_id in worker.cancelled:
                break
            await asyncio.sleep(0.02)
        assert req_id in worker.cancelled


async def test_a_stream_resumed_on_another_replica_within_the_grace_runs_to_its_end(redis_url: str) -> None:
    settings_a = make_settings(redis_url, resume_grace_s=1.0, gateway_id="gateway-a")
    settings_b = make_settings(redis_url, resume_grace_s=1.0, gateway_id="gateway-b")
    async with (
        FakeWorker(redis_url, words=LONG_WORDS, delay_s=0.05) as worker,
        ServerThread(create_app(settings_a)) as a,
        ServerThread(create_app(settings_b)) as b,
        httpx.AsyncClient(headers=HEADERS, timeout=30) as http,
    ):
        async with http.stream("POST", f"{a.url}{CHAT}", json=BODY) as response:
            text, last_id = await read_until(response, " w3")
        completion_id = last_id.split(".")[0]
        rest = await http.get(f"{b.url}{CHAT}/{completion_id}/stream", headers={"Last-Event-ID": last_id})
        assert text + content_of(rest.text) == "".join(LONG_WORDS)
        assert worker.requests[0].req_id not in worker.cancelled
