"""Structured output and tool calls through the official openai client, on the real stack and model.

The bundled 135M model writes free-form text; every check here holds only because decoding is
constrained: 50 varied prompts x 2 (stream, non-stream) against strict schemas, JSON mode, forced and
named tool calls (streamed deltas reassemble into exactly the non-streamed call), ``n`` choices,
``parse()`` with a pydantic model, ``logit_bias`` and a Batch job whose bad-schema line fails alone.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from typing import Any

import jsonschema
import openai
import pytest
from pydantic import BaseModel

from busstop.stack import LocalStack
from tests.stack import MODEL

MAX_TOKENS = 120
NUM_CONCURRENT = 16

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "maxLength": 32},
    },
    "required": ["name", "age", "email"],
    "additionalProperties": False,
}
REVIEW = {
    "type": "object",
    "properties": {
        "sentiment": {"enum": ["positive", "negative", "neutral"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "keywords": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3},
    },
    "required": ["sentiment", "score", "keywords"],
    "additionalProperties": False,
}
PRODUCT = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 30},
        "price": {"type": "number", "minimum": 0, "maximum": 10000},
        "in_stock": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["new", "sale", "popular"]}, "maxItems": 3},
    },
    "required": ["title", "price", "in_stock", "tags"],
    "additionalProperties": False,
}
SCHEMAS = {"person": PERSON, "review": REVIEW, "product": PRODUCT}
SUBJECTS = ["a pirate", "a chef", "a teacher", "a nurse", "an astronaut", "a farmer", "a poet", "a pilot",
            "a doctor", "a painter"]
TASKS = [
    ("person", "Make up {s} and describe them as JSON."),
    ("review", "Review a film about {s}. Answer in JSON."),
    ("product", "Invent a product that {s} would buy, as JSON."),
    ("person", "Who is {s}? Reply with a JSON record."),
    ("review", "Classify this text: 'I met {s} and it was wonderful.'"),
]
PROMPTS = [(kind, text.format(s=s)) for kind, text in TASKS for s in SUBJECTS]  # 50 prompts

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 1, "maxLength": 40},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search_web",
        "description": "Search the web",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "maxLength": 60}},
            "required": ["query"],
            "additionalProperties": False,
        },
    },
}
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, SEARCH)}


@pytest.fixture
def client(stack: LocalStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.api_key, max_retries=0)


async def _schema_answer(client: openai.AsyncOpenAI, kind: str, prompt: str, stream: bool) -> tuple[str, str]:
    request: dict[str, Any] = dict(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        response_format={"type": "json_schema", "json_schema": {"name": kind, "schema": SCHEMAS[kind],
                                                                 "strict": True}},
        max_tokens=MAX_TOKENS,
        temperature=0.7,
        seed=len(prompt),
    )
    if not stream:
        completion = await client.chat.completions.create(**request)
        return completion.choices[0].message.content or "", completion.choices[0].finish_reason
    parts, finish = [], ""
    async for chunk in await client.chat.completions.create(**request, stream=True):
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return "".join(parts), finish


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_strict_json_schema_output_validates_for_50_varied_prompts(stack: LocalStack, stream: bool) -> None:
    async def run_all() -> list[tuple[str, str]]:
        client = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=stack.api_key, max_retries=0)
        gate = asyncio.Semaphore(NUM_CONCURRENT)

        async def one(kind: str, prompt: str) -> tuple[str, str]:
            async with gate:
                return await _schema_answer(client, kind, prompt, stream)

        try:
            return await asyncio.gather(*(one(kind, prompt) for kind, prompt in PROMPTS))
        finally:
            await client.close()

    answers = asyncio.run(run_all())
    assert len(answers) == 50
    for (kind, prompt), (text, finish) in zip(PROMPTS, answers, strict=True):
        assert finish == "stop", (prompt, text)
        jsonschema.validate(json.loads(text), SCHEMAS[kind])


def test_json_mode_gives_parseable_json(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Describe a cat in JSON."}],
        response_format={"type": "json_object"}, max_tokens=MAX_TOKENS, temperature=0,
    )
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)


def _streamed_calls(client: openai.OpenAI, **request: Any) -> tuple[list[dict[str, str]], str | None]:
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in client.chat.completions.create(**request, stream=True):
        for choice in chunk.choices:
            assert not choice.delta.content, "a forced call has no content"
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                if delta.id is not None:  # a call's first delta: id, type and name, once
                    assert not call["id"] and delta.type == "function"
                    call["id"] = delta.id
                    call["name"] = (delta.function.name if delta.function else None) or ""
                call["arguments"] += (delta.function.arguments if delta.function else None) or ""
            finish = choice.finish_reason or finish
    return [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize("parallel", [False, True], ids=["one-call", "parallel-allowed"])
def test_a_required_tool_call_validates_and_its_stream_reassembles_into_the_same_call(
    client: openai.OpenAI, parallel: bool
) -> None:
    request: dict[str, Any] = dict(
        model=MODEL, messages=[{"role": "user", "content": "What's the weather like in Paris today?"}],
        tools=[WEATHER, SEARCH], tool_choice="required", parallel_tool_calls=parallel,
        max_tokens=MAX_TOKENS * 2, temperature=0,
    )
    completion = client.chat.completions.create(**request)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert calls and (parallel or len(calls) == 1)
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])
    streamed, finish = _streamed_calls(client, **request)
    assert finish == "tool_calls"
    assert [(c["name"], c["arguments"]) for c in streamed] == [
        (c.function.name, c.function.arguments) for c in calls
    ]


def test_a_named_tool_choice_calls_that_function(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What's the weather like in Paris today?"}],
        tools=[WEATHER, SEARCH], tool_choice={"type": "function", "function": {"name": "search_web"}},
        parallel_tool_calls=False, max_tokens=MAX_TOKENS, temperature=0,
    )
    (call,) = completion.choices[0].message.tool_calls or []
    assert call.function.name == "search_web"
    jsonschema.validate(json.loads(call.function.arguments), PARAMETERS["search_web"])


def test_a_tool_result_feeds_back_into_the_conversation(client: openai.OpenAI) -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}
    completion = client.chat.completions.create(
        model=MODEL, tools=[WEATHER], tool_choice="none", max_tokens=24, temperature=0,
        messages=[{"role": "user", "content": "What's the weather in Paris?"},
                  {"role": "assistant", "content": None, "tool_calls": [call]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"}],
    )
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.prompt_tokens > 40


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_n_3_gives_three_choices(client: openai.OpenAI, stream: bool) -> None:
    request: dict[str, Any] = dict(
        model=MODEL, messages=[{"role": "user", "content": "Say something nice."}], n=3, max_tokens=8,
        temperature=1.0, seed=7, extra_body={"ignore_eos": True},
    )
    if not stream:
        completion = client.chat.completions.create(**request)
        assert [c.index for c in completion.choices] == [0, 1, 2]
        assert all(c.message.content and c.finish_reason == "length" for c in completion.choices)
        assert completion.usage is not None and completion.usage.completion_tokens == 24
        assert len({c.message.content for c in completion.choices}) > 1  # each choice its own seed
        return
    texts = {0: "", 1: "", 2: ""}
    finishes: dict[int, str] = {}
    usage = None
    stream = client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert finishes == {0: "length", 1: "length", 2: "length"}
    assert all(texts.values())
    assert usage is not None and usage.completion_tokens == 24


class City(BaseModel):
    name: str
    country: str
    population: int


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    completion = client.beta.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "Tell me about Tokyo."}],
        response_format=City, max_tokens=MAX_TOKENS, temperature=0,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, City) and parsed.name


def test_guided_choice_and_regex_on_completions(client: openai.OpenAI) -> None:
    choice = client.completions.create(
        model=MODEL, prompt="Is the sky blue? Answer:", max_tokens=8, temperature=0,
        extra_body={"guided_choice": ["yes", "no", "maybe"]},
    )
    assert choice.choices[0].text in ("yes", "no", "maybe")
    regex = client.completions.create(
        model=MODEL, prompt="A phone number:", max_tokens=20, temperature=0,
        extra_body={"guided_regex": r"\d{3}-\d{4}"},
    )
    assert regex.choices[0].finish_reason == "stop"
    text = regex.choices[0].text
    assert len(text) == 8 and text[3] == "-" and (text[:3] + text[4:]).isdigit()


def test_logit_bias_of_100_forces_its_token(client: openai.OpenAI) -> None:
    free = client.completions.create(model=MODEL, prompt="The weather today", max_tokens=1, temperature=0,
                                     logprobs=1)
    assert free.choices[0].logprobs is not None
    forced_id = 1234
    biased = client.completions.create(
        model=MODEL, prompt="The weather today", max_tokens=3, temperature=0, logprobs=1,
        logit_bias={str(forced_id): 100}, extra_body={"ignore_eos": True},
    )
    tokens = biased.choices[0].logprobs.tokens if biased.choices[0].logprobs else []
    assert len(tokens) == 3 and len(set(tokens)) == 1
    assert tokens[0] != (free.choices[0].logprobs.tokens or [""])[0]


def test_a_batch_line_with_a_bad_schema_fails_alone(stack: LocalStack) -> None:
    internal = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.internal_key, max_retries=0)
    formats = [
        ("A person, as JSON.", {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}),
        ("A word.", {"type": "json_schema", "json_schema": {
            "name": "bad", "schema": {"type": "string", "minLength": 5, "maxLength": 2}}}),
        ("Describe a cat in JSON.", {"type": "json_object"}),
    ]
    lines = [
        json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions", "body": {
            "model": MODEL, "messages": [{"role": "user", "content": prompt}],
            "response_format": fmt, "max_tokens": MAX_TOKENS, "temperature": 0}})
        for i, (prompt, fmt) in enumerate(formats)
    ]
    uploaded = internal.files.create(file=("input.jsonl", io.BytesIO("\n".join(lines).encode())),
                                     purpose="batch")
    batch = internal.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                    completion_window="24h")
    deadline = time.monotonic() + 180
    while batch.status not in ("completed", "failed", "cancelled", "expired") and time.monotonic() < deadline:
        time.sleep(0.5)
        batch = internal.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.output_file_id and batch.error_file_id, batch
    outputs = {o["custom_id"]: o for o in map(json.loads, internal.files.content(batch.output_file_id).text
                                              .splitlines())}
    assert sorted(outputs) == ["line-0", "line-2"]
    record = outputs["line-0"]["response"]["body"]["choices"][0]["message"]["content"]
    jsonschema.validate(json.loads(record), PERSON)
    assert isinstance(json.loads(outputs["line-2"]["response"]["body"]["choices"][0]["message"]["content"]),
                      dict)
    (error,) = map(json.loads, internal.files.content(batch.error_file_id).text.splitlines())
    assert error["custom_id"] == "line-1"
    assert error["response"]["status_code"] == 400
    body = error["response"]["body"]["error"]
    assert body["param"] == "response_format.json_schema.schema" and "minLength" in body["message"]
