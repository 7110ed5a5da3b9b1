"""Auth and bad input end to end: OpenAI-shaped errors with the right status, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from busstop.stack import LocalStack
from tests.stack import MAX_MODEL_LEN, MODEL


@pytest.fixture
def http(stack: LocalStack) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=60) as client:
        yield client


def chat(**overrides: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **overrides}


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    if code is not None:
        assert error["code"] == code
    return error


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key", "Basic abc"])
def test_missing_or_wrong_api_key_is_401(stack: LocalStack, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.post(f"{stack.url}/v1/chat/completions", json=chat(), headers=headers, timeout=30)
    assert_error(response, 401)


def test_unknown_model_is_404(http: httpx.Client) -> None:
    assert_error(http.post("/v1/chat/completions", json=chat(model="no-such-model")), 404, "model_not_found")


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_over_the_context_window_is_400_in_both_modes(http: httpx.Client, stream: bool) -> None:
    body = chat(messages=[{"role": "user", "content": "word " * MAX_MODEL_LEN}], stream=stream)
    error = assert_error(http.post("/v1/chat/completions", json=body), 400, "context_length_exceeded")
    assert str(MAX_MODEL_LEN) in error["message"]


@pytest.mark.parametrize(
    "body",
    [
        chat(max_tokens=0),
        chat(messages=[]),
        chat(messages=[{"role": "wizard", "content": "hi"}]),
        chat(messages="hi"),
        chat(temperature="hot"),
        {"messages": [{"role": "user", "content": "hi"}]},
    ],
    ids=["max_tokens_0", "empty_messages", "unknown_role", "messages_not_a_list", "wrong_type", "no_model"],
)
def test_bad_inputs_are_4xx(http: httpx.Client, body: dict[str, Any]) -> None:
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code in (400, 422), response.text
    assert_error(response, response.status_code)


def test_malformed_json_is_4xx(http: httpx.Client) -> None:
    headers = {"Content-Type": "application/json"}
    response = http.post("/v1/chat/completions", content=b"{not json", headers=headers)
    assert response.status_code in (400, 422), response.text
    assert_error(response, response.status_code)


def test_the_stack_still_serves_after_bad_requests(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json=chat(extra_body=None))
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] >= 1
