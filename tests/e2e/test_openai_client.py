"""The official openai client against the real stack: streaming, non-streaming, usage, concurrency."""

from __future__ import annotations

import asyncio

import openai
import pytest

from busstop.stack import LocalStack
from tests.stack import MAX_MODEL_LEN, MODEL

FIXED_LENGTH = {"ignore_eos": True}  # vLLM's extension: exactly max_tokens tokens


@pytest.fixture
def client(stack: LocalStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.api_key, max_retries=0)


def test_non_stream_chat_completion_reports_usage(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=12,
        temperature=0,
        extra_body=FIXED_LENGTH,
    )
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 12
    assert 10 < completion.usage.prompt_tokens < 100
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 12


def test_stream_chat_completion_ends_with_finish_reason_and_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me about the sea."}],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=FIXED_LENGTH,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish_reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = chunks[-1].usage
    assert text.strip()
    assert finish_reasons == ["length"]
    assert usage is not None and usage.completion_tokens == 16 and usage.prompt_tokens > 0
    assert len({c.id for c in chunks}) == 1


def test_a_stop_string_ends_the_completion_before_it(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model=MODEL, prompt="1, 2, 3, 4, 5,", max_tokens=40, temperature=0, stop=[" 8"]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert " 8" not in choice.text


async def test_16_concurrent_streams_all_complete_while_a_bad_request_fails(stack: LocalStack) -> None:
    client = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=stack.api_key, max_retries=0)

    async def one(i: int) -> tuple[int, str | None, int]:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Write a sentence about the number {i}."}],
            max_tokens=8 + i % 4,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=FIXED_LENGTH,
        )
        finish, completion_tokens = None, -1
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
            if chunk.usage is not None:
                completion_tokens = chunk.usage.completion_tokens
        return i, finish, completion_tokens

    async def too_long() -> int:
        try:
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "word " * MAX_MODEL_LEN}], stream=True
            )
        except openai.BadRequestError as exc:
            return exc.status_code
        return 200

    async with client:
        *results, bad_status = await asyncio.gather(*(one(i) for i in range(16)), too_long())
    assert bad_status == 400
    assert sorted(results) == [(i, "length", 8 + i % 4) for i in range(16)]
