"""The official ``openai`` client against the gateway served by uvicorn, with a stand-in worker."""

from __future__ import annotations

import httpx
import openai
import pytest
from pydantic_core import from_json

from tests.gateway.conftest import API_KEY, ServerThread
from tests.gateway.fake_worker import WORDS, FakeWorker

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say hello"}]


def client_for(server: ServerThread, key: str = API_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


async def test_chat_stream_has_role_first_content_finish_and_usage(
    server: ServerThread, redis_url: str
) -> None:
    async with FakeWorker(redis_url), client_for(server) as client:
        stream = await client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},  # type: ignore[arg-type]
        )
        chunks = [chunk async for chunk in stream]
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" and c.model == "tiny" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    with_choices = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == "".join(WORDS)
    assert [c.choices[0].finish_reason for c in with_choices][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(WORDS)
    assert chunks[-1].usage.prompt_tokens == 4  # the stand-in counts words: "be brief say hello"
    assert chunks[-1].usage.total_tokens == 4 + len(WORDS)
    assert all(c.usage is None for c in chunks[:-1])


async def test_chat_non_stream_has_message_and_usage(server: ServerThread, redis_url: str) -> None:
    async with FakeWorker(redis_url) as worker, client_for(server) as client:
        response = await client.chat.completions.create(model="tiny", messages=MESSAGES)  # type: ignore[arg-type]
    assert response.object == "chat.completion" and response.id.startswith("chatcmpl-")
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content == "".join(WORDS)
    assert response.choices[0].finish_reason == "stop"
    assert response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (4, len(WORDS))
    assert response.usage.total_tokens == 4 + len(WORDS)
    sent = worker.requests[0]
    assert [m.role for m in sent.messages or []] == ["system", "user"]
    # Without max_tokens a chat completion may use the whole context window the worker reports.
    assert sent.sampling.max_tokens == worker.max_model_len


async def test_sampling_fields_reach_the_worker(server: ServerThread, redis_url: str) -> None:
    async with FakeWorker(redis_url) as worker, client_for(server) as client:
        await client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_completion_tokens=3,
            temperature=0.5,
            top_p=0.9,
            stop=["\n", "END"],
            seed=7,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            user="someone",
            extra_body={
                "top_k": 20,
                "min_p": 0.05,
                "min_tokens": 1,
                "ignore_eos": True,
                "repetition_penalty": 1.1,
            },
        )
    s = worker.requests[0].sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.seed, s.stop) == (3, 0.5, 0.9, 7, ["\n", "END"])
    assert (s.presence_penalty, s.frequency_penalty) == (0.5, -0.5)
    assert (s.top_k, s.min_p, s.min_tokens, s.ignore_eos, s.repetition_penalty) == (20, 0.05, 1, True, 1.1)
    assert s.logprobs is None


async def test_completions_stream_and_non_stream(server: ServerThread, redis_url: str) -> None:
    async with FakeWorker(redis_url) as worker, client_for(server) as client:
        response = await client.completions.create(model="tiny", prompt="once upon", max_tokens=2)
        stream = await client.completions.create(model="tiny", prompt="once upon", max_tokens=2, stream=True)
        chunks = [chunk async for chunk in stream]
        by_ids = await client.completions.create(model="tiny", prompt=[5, 6, 7])
    assert response.object == "text_completion" and response.id.startswith("cmpl-")
    assert response.choices[0].text == "".join(WORDS[:2])
    assert response.choices[0].finish_reason == "length"
    assert response.usage is not None and response.usage.completion_tokens == 2
    assert "".join(c.choices[0].text for c in chunks) == "".join(WORDS[:2])
    assert chunks[-1].choices[0].finish_reason == "length"
    assert by_ids.choices[0].text
    assert worker.requests[0].prompt == "once upon" and worker.requests[0].sampling.max_tokens == 2
    assert worker.requests[2].prompt_token_ids == [5, 6, 7]
    assert worker.requests[2].sampling.max_tokens == 16  # OpenAI's default for completions


async def test_chat_logprobs_have_openais_shape(server: ServerThread, redis_url: str) -> None:
    async with FakeWorker(redis_url) as worker, client_for(server) as client:
        response = await client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,  # type: ignore[arg-type]
            logprobs=True,
            top_logprobs=2,
        )
        stream = await client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,  # type: ignore[arg-type]
            logprobs=True,
            stream=True,
        )
        chunks = [c async for c in stream]
    assert worker.requests[0].sampling.logprobs == 2 and worker.requests[1].sampling.logprobs == 0
    logprobs = response.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert [t.token for t in logprobs.content] == list(WORDS)
    first = logprobs.content[0]
    assert first.logprob == -0.5 and first.bytes == list(WORDS[0].encode())
    assert [(t.token, t.logprob) for t in first.top_logprobs] == [(WORDS[0], -1.0), (WORDS[1], -2.0)]
    streamed = [
        t.token
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content or []
    ]
    assert streamed == list(WORDS)


async def test_completion_logprobs_have_the_legacy_shape(server: ServerThread, redis_url: str) -> None:
    async with FakeWorker(redis_url), client_for(server) as client:
        response = await client.completions.create(model="tiny", prompt="hi", logprobs=1)
    logprobs = response.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens == list(WORDS)
    assert logprobs.token_logprobs == [-0.5] * len(WORDS)
    assert logprobs.top_logprobs == [{WORDS[0]: -1.0}] * len(WORDS)
    assert logprobs.text_offset == [0, 5, 6, 12]


async def test_wrong_key_and_unknown_model_raise_the_clients_errors(
    server: ServerThread, redis_url: str
) -> None:
    async with FakeWorker(redis_url), client_for(server, key="wrong") as bad, client_for(server) as good:
        with pytest.raises(openai.AuthenticationError):
            await bad.chat.completions.create(model="tiny", messages=MESSAGES)  # type: ignore[arg-type]
        with pytest.raises(openai.NotFoundError) as not_found:
            await good.chat.completions.create(model="nope", messages=MESSAGES)  # type: ignore[arg-type]
        assert not_found.value.code == "model_not_found"
        models = await good.models.list()
    assert [m.id for m in models.data] == ["tiny"]


async def test_an_error_mid_stream_is_an_error_event(server: ServerThread, redis_url: str) -> None:
    async with FakeWorker(redis_url, fail_after=2), client_for(server) as client:
        stream = await client.chat.completions.create(model="tiny", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        received = []
        with pytest.raises(openai.APIError, match="the engine failed"):
            async for chunk in stream:
                received.append(chunk)
        assert "".join(c.choices[0].delta.content or "" for c in received) == "".join(WORDS[:2])
        with pytest.raises(openai.InternalServerError):  # not streamed: nothing was sent, so a real 500
            await client.chat.completions.create(model="tiny", messages=MESSAGES)  # type: ignore[arg-type]


def sse_events(body: str) -> list[str]:
    """The data of each event; every chunk event has an ``id:`` that names its stream and only grows."""
    assert body.endswith("\n\n")
    events = body[:-2].split("\n\n")
    assert events[-1] == "data: [DONE]", events
    ids = [e.split("\n")[0].removeprefix("id: ") for e in events[:-1]]
    assert all(e.count("\n") == 1 and e.startswith("id: ") for e in events[:-1]), events
    chunk_ids = [from_json(e.split("data: ")[1])["id"] for e in events[:-1]]
    assert all(i.startswith(f"{c}.") for i, c in zip(ids, chunk_ids, strict=True))
    seqs = [int(i.rsplit(".", 1)[1]) for i in ids]
    assert seqs == sorted(seqs), ids
    return [e.split("\n")[-1].removeprefix("data: ") for e in events]


async def test_sse_wire_format_is_exact(server: ServerThread, redis_url: str) -> None:
    body = {"model": "tiny", "messages": MESSAGES, "stream": True, "max_tokens": 2}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with FakeWorker(redis_url), httpx.AsyncClient(base_url=server.url, headers=headers) as http:
        response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-request-id"] and response.headers["x-request-id"] in response.text
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [from_json(e) for e in events[:-1]]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": WORDS[0]},
        {"content": WORDS[1]},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "length"]
    for chunk in chunks:
        assert set(chunk) == {"id", "object", "created", "model", "system_fingerprint", "choices"}
        assert chunk["choices"][0]["index"] == 0 and chunk["choices"][0]["logprobs"] is None
