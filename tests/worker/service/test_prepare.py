"""Request validation before the engine sees a request: every problem is an OpenAI-shaped 400."""

from __future__ import annotations

import pytest

from shared.messages import ChatMessage, GenerateRequest, SamplingOptions, TrafficClass
from worker.loader.load import load_tokenizer, resolve_path
from worker.service.prepare import RequestError, parse_request, prepare_request, req_id_of
from worker.tokenizer import Tokenizer

VOCAB = 49152


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return load_tokenizer(resolve_path("default"))


def chat(content: str = "hi", **sampling: object) -> GenerateRequest:
    return GenerateRequest(
        req_id="r",
        model="smollm2",
        traffic_class=TrafficClass.BATCH,
        messages=[ChatMessage(role="user", content=content)],
        sampling=SamplingOptions(**sampling),
    )


def error_of(req: GenerateRequest, tokenizer: Tokenizer, max_model_len: int = 2048):
    with pytest.raises(RequestError) as info:
        prepare_request(req, tokenizer, max_model_len, VOCAB)
    return info.value.error


def test_chat_is_templated_and_max_tokens_kept_within_the_window(tokenizer: Tokenizer) -> None:
    req = chat(max_tokens=10_000, stop=["", "END"], temperature=0.0)
    prepared = prepare_request(req, tokenizer, 2048, VOCAB)
    assert prepared.prompt_token_ids == tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    assert prepared.params.max_tokens == 2048 - len(prepared.prompt_token_ids)
    assert (prepared.priority, prepared.stop, prepared.params.temperature) == (2, ("END",), 0.0)


def test_a_prompt_over_the_context_window_is_a_400_context_length_exceeded(tokenizer: Tokenizer) -> None:
    error = error_of(chat("word " * 300), tokenizer, max_model_len=128)
    assert (error.status, error.code, error.param) == (400, "context_length_exceeded", "messages")
    assert "128" in error.message


@pytest.mark.parametrize(
    ("req", "param"),
    [
        (GenerateRequest(req_id="r", model="m", messages=[]), "messages"),
        (GenerateRequest(req_id="r", model="m"), "messages"),
        (GenerateRequest(req_id="r", model="m", prompt=""), "prompt"),
        (GenerateRequest(req_id="r", model="m", prompt_token_ids=[VOCAB]), "prompt"),
        (chat(max_tokens=0), "max_tokens"),
        (chat(temperature=-1.0), None),
        (chat(top_p=0.0), None),
    ],
)
def test_bad_requests_are_400s(req: GenerateRequest, param: str | None, tokenizer: Tokenizer) -> None:
    error = error_of(req, tokenizer)
    assert (error.status, error.param) == (400, param)


def test_unreadable_messages_are_400s_and_keep_their_req_id() -> None:
    for data in ('{"req_id": "x"}', '{"req_id": "x", "model": "m", "v": 99}', "not json", None):
        with pytest.raises(RequestError) as info:
            parse_request(data)
        assert info.value.error.status == 400
    assert req_id_of('{"req_id": "x"}') == "x"
    assert req_id_of("not json") is None and req_id_of("[1]") is None
