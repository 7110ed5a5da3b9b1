"""Structured output, tools and n at the gateway: every bad field is a 400 naming its param before
anything is queued, and what passes reaches the worker as one grammar, the tools and n requests."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from shared.structured import MAX_GRAMMAR_BYTES
from tests.gateway.fake_worker import FakeWorker
from tests.gateway.test_bad_input import CHAT, assert_openai_error, chat

COMPLETIONS = "/v1/completions"
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def schema_format(schema: object, name: str = "out") -> dict[str, object]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


def huge_schema() -> dict[str, Any]:
    properties = {f"field_{i:05d}": {"type": "string", "description": "x" * 40} for i in range(2000)}
    return {"type": "object", "properties": properties}


BAD_CHAT = [
    # an invalid JSON schema, and schemas no grammar can satisfy or express
    (chat(response_format=schema_format({"type": 5})), "response_format.json_schema.schema", "type"),
    (chat(response_format=schema_format({"type": "string", "minLength": 5, "maxLength": 2})),
     "response_format.json_schema.schema", "minLength"),
    (chat(response_format=schema_format({"type": "string", "format": "weird"})),
     "response_format.json_schema.schema", "Unknown format"),
    (chat(response_format=schema_format({"$ref": "http://example.com/s.json"})),
     "response_format.json_schema.schema", "registry"),
    (chat(response_format=schema_format(huge_schema())), "response_format.json_schema.schema",
     f"over {MAX_GRAMMAR_BYTES // 1024} KiB"),
    (chat(response_format=schema_format({"type": "object"}, name="bad name!")),
     "response_format.json_schema.name", "pattern"),
    (chat(response_format={"type": "json_schema"}), "response_format.json_schema", "required"),
    (chat(response_format={"type": "yaml"}), "response_format", "must be one of"),
    # tools and tool_choice
    (chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}),
     "tool_choice", "not in tools"),
    (chat(tool_choice="required"), "tool_choice", "only allowed when tools"),
    (chat(tools=[WEATHER], tool_choice="sometimes"), "tool_choice", None),
    (chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]),
     "tools[0].function.parameters", "type must be"),
    (chat(tools=[{"type": "retrieval"}]), "tools[0].type", None),
    (chat(tools=[WEATHER] * 129), "tools", "129"),
    (chat(messages=[{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f"}}]}]),
     "messages[0].tool_calls[0].function.arguments", "required"),
    # vLLM's guided decoding
    (chat(guided_regex="a(b"), "guided_regex", "unclosed group"),
    (chat(guided_choice=[]), "guided_choice", None),
    (chat(guided_json={"type": "object"}, guided_choice=["a"]), "guided_choice", "use one of"),
    (chat(response_format={"type": "json_object"}, guided_regex="a+"), "guided_regex", "use one of"),
]


@pytest.mark.parametrize(("body", "param", "says"), BAD_CHAT)
async def test_bad_structured_chat_fields_are_400_naming_the_param(
    client: httpx.AsyncClient, body: dict[str, object], param: str, says: str | None
) -> None:
    error = assert_openai_error(await client.post(CHAT, json=body), 400)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    if says is not None:
        assert says in str(error["message"])


async def test_bad_guided_completion_fields_are_400(client: httpx.AsyncClient) -> None:
    body = {"model": "tiny", "prompt": "x", "guided_json": {"type": "array", "minItems": 3, "maxItems": 1}}
    error = assert_openai_error(await client.post(COMPLETIONS, json=body), 400)
    assert error["param"] == "guided_json"


async def test_n_times_max_tokens_over_the_limit_is_refused_before_it_is_queued(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    async with FakeWorker(redis_url, max_model_len=100_000) as worker:
        error = assert_openai_error(await client.post(CHAT, json=chat(n=16, max_tokens=5000)), 400)
        assert error["param"] == "n" and "65536" in str(error["message"])
        body = {"model": "tiny", "prompt": "x", "n": 9, "max_tokens": 8000}
        assert assert_openai_error(await client.post(COMPLETIONS, json=body), 400)["param"] == "n"
        assert worker.requests == []


async def test_what_passes_reaches_the_worker_as_a_grammar_tools_and_one_request_per_choice(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    async with FakeWorker(redis_url) as worker:
        body = chat(tools=[WEATHER], tool_choice="required", n=2, seed=5, logit_bias={"17": -3.5})
        response = await client.post(CHAT, json=body)
        assert response.status_code == 200, response.text
        assert [c["index"] for c in response.json()["choices"]] == [0, 1]
        first, second = worker.requests
        assert first.tools == [WEATHER]
        grammar = first.sampling.grammar or ""
        assert grammar.startswith("start: call") and '\\"name\\": \\"get_weather\\"' in grammar
        assert first.sampling.logit_bias == {17: -3.5}
        assert (first.sampling.seed, second.sampling.seed) == (5, 6)  # each choice its own draws
        assert second.req_id == f"{first.req_id}-1" and second.sampling.grammar == grammar

        response = await client.post(CHAT, json=chat(tools=[WEATHER], tool_choice="none"))
        assert response.status_code == 200
        plain = worker.requests[-1]
        assert plain.tools is None and plain.sampling.grammar is None  # "none": no tools in the prompt

        response = await client.post(CHAT, json=chat(response_format=schema_format({"type": "integer"})))
        assert response.status_code == 200
        assert worker.requests[-1].sampling.grammar == (
            'start: %json {"type": "integer", "x-guidance": {"whitespace_flexible": false}}')
