"""Request validation before the engine sees a request: every problem is an OpenAI-shaped 400."""

from __future__ import annotations

import pytest

from shared.messages import ChatMessage, GenerateRequest, SamplingOptions, ToolCall, TrafficClass
from worker.loader.load import load_tokenizer, resolve_path
from worker.service.prepare import RequestError, parse_request, prepare_request, req_id_of
from worker.structured.grammar import GrammarCompiler
from worker.tokenizer import Tokenizer, tool_prompt

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


def test_a_grammar_is_compiled_here_and_a_bad_one_is_a_400(tokenizer: Tokenizer) -> None:
    grammars = GrammarCompiler(tokenizer.hf, VOCAB)
    req = chat(grammar='start: "yes" | "no"', logit_bias={7: 2.0})
    prepared = prepare_request(req, tokenizer, 2048, VOCAB, grammars)
    assert prepared.constraint is not None and not prepared.constraint.is_finished
    assert prepared.params.logit_bias == ((7, 2.0),)
    with pytest.raises(RequestError) as info:
        prepare_request(chat(grammar="start: /a(b/"), tokenizer, 2048, VOCAB, grammars)
    assert (info.value.error.status, info.value.error.param) == (400, "response_format")
    with pytest.raises(RequestError) as info:  # a token id past this model's vocabulary
        prepare_request(chat(logit_bias={VOCAB: 1.0}), tokenizer, 2048, VOCAB, grammars)
    assert info.value.error.param == "logit_bias"


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
CALL = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')


def test_tools_and_tool_results_are_written_out_for_a_template_without_tools(tokenizer: Tokenizer) -> None:
    messages = [ChatMessage(role="user", content="Weather in Paris?"),
                ChatMessage(role="assistant", content="", tool_calls=[CALL]),
                ChatMessage(role="tool", content="18 C", tool_call_id="call_1")]
    req = GenerateRequest(req_id="r", model="m", messages=messages, tools=TOOLS)
    text = tokenizer.hf.decode(prepare_request(req, tokenizer, 2048, VOCAB).prompt_token_ids)
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert "<|im_start|>user\n<tool_response>\n18 C\n</tool_response>" in text


def test_a_template_that_renders_tools_gets_them_in_transformers_shape() -> None:
    messages = [{"role": "user", "content": "hi", "tool_calls": None},
                {"role": "assistant", "content": "", "tool_calls": [CALL.model_dump()]}]
    shaped = tool_prompt.for_template(messages)
    assert shaped[0] == {"role": "user", "content": "hi"}
    assert shaped[1]["tool_calls"] == [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
