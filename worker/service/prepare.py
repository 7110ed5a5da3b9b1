"""Turn a GenerateRequest into what the engine takes: prompt token ids and SamplingParams.

Runs on the I/O side (a thread pool), never on the step loop. Every problem with the request
becomes a ``RequestError`` carrying the OpenAI-shaped error the client gets back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from jinja2 import TemplateError

from shared.messages import CLASS_RANK, DATA_FIELD, ErrorInfo, GenerateRequest, MessageError, decode
from worker.engine.constraint import TokenConstraint
from worker.engine.sampling_params import SamplingParams


class RequestError(Exception):
    """A request that cannot be served; ``error`` is what the client is told."""

    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(error.message)
        self.error = error


class PromptTokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> list[int]: ...


class ConstraintCompiler(Protocol):
    """``worker.structured.grammar.GrammarCompiler``: a grammar's text to a fresh constraint."""

    def compile(self, grammar: str) -> TokenConstraint: ...


@dataclass(frozen=True)
class PreparedRequest:
    req_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    priority: int
    arrival_time: float
    stop: tuple[str, ...]
    traffic_class: str = "interactive"
    traceparent: str | None = None  # the gateway's span, parent of this worker's spans
    constraint: TokenConstraint | None = None  # structured output, compiled here
    gateway_id: str | None = None  # the gateway reading the reply, if it said


def bad_request(message: str, param: str | None = None, code: str | None = None) -> RequestError:
    return RequestError(ErrorInfo(status=400, message=message, param=param, code=code))


def parse_request(data: str | None) -> GenerateRequest:
    """The message's GenerateRequest; a RequestError (answered 400) for one this worker cannot read."""
    try:
        return decode(GenerateRequest, {DATA_FIELD: data})
    except MessageError as exc:
        raise bad_request(f"malformed request message: {exc}") from exc


def req_id_of(data: str | None) -> str | None:
    """The req_id of a message that does not parse, so that its client still gets the error."""
    try:
        value = json.loads(data or "").get("req_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def prompt_token_ids(req: GenerateRequest, tokenizer: PromptTokenizer) -> list[int]:
    if req.messages is not None:
        if not req.messages:
            raise bad_request("messages must not be empty", param="messages")
        try:
            ids = tokenizer.apply_chat_template([m.model_dump() for m in req.messages], tools=req.tools)
        except (ValueError, TemplateError) as exc:  # the template rejects them: unknown role, bad order
            raise bad_request(f"invalid messages: {exc}", param="messages") from exc
        param = "messages"
    elif req.prompt is not None:
        ids = tokenizer.encode(req.prompt)
        param = "prompt"
    elif req.prompt_token_ids is not None:
        ids = list(req.prompt_token_ids)
        param = "prompt"
    else:
        raise bad_request("one of messages, prompt or prompt_token_ids is required", param="messages")
    if not ids:
        raise bad_request("the prompt is empty", param=param)
    return ids


def compile_grammar(grammar: str | None, grammars: ConstraintCompiler | None) -> TokenConstraint | None:
    if grammar is None:
        return None
    if grammars is None:
        raise bad_request("this worker does not support structured output", param="response_format")
    try:
        return grammars.compile(grammar)
    except ValueError as exc:
        raise bad_request(f"invalid grammar or schema: {exc}", param="response_format") from exc


def prepare_request(
    req: GenerateRequest, tokenizer: PromptTokenizer, max_model_len: int, vocab_size: int,
    grammars: ConstraintCompiler | None = None,
) -> PreparedRequest:
    """Tokenize and validate ``req`` for a model with context window ``max_model_len``; compile its
    grammar, if it has one."""
    ids = prompt_token_ids(req, tokenizer)
    if any(not 0 <= t < vocab_size for t in ids):
        raise bad_request(f"prompt token ids must be in [0, {vocab_size})", param="prompt")
    if len(ids) >= max_model_len:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, your prompt has "
            f"{len(ids)} tokens, which leaves no room for the completion. Please shorten the prompt.",
            param="messages" if req.messages is not None else "prompt",
            code="context_length_exceeded",
        )
    s = req.sampling
    if s.max_tokens < 1:
        raise bad_request("max_tokens must be at least 1", param="max_tokens")
    if any(not 0 <= t < vocab_size for t in s.stop_token_ids):
        raise bad_request(f"stop_token_ids must be in [0, {vocab_size})", param="stop_token_ids")
    if any(not 0 <= t < vocab_size for t in s.logit_bias):
        raise bad_request(f"logit_bias token ids must be in [0, {vocab_size})", param="logit_bias")
    try:
        params = SamplingParams(
            # The completion stops at the context window: finish_reason "length", as vLLM does.
            max_tokens=min(s.max_tokens, max_model_len - len(ids)),
            min_tokens=s.min_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            min_p=s.min_p,
            presence_penalty=s.presence_penalty,
            frequency_penalty=s.frequency_penalty,
            repetition_penalty=s.repetition_penalty,
            seed=s.seed,
            stop_token_ids=tuple(s.stop_token_ids),
            ignore_eos=s.ignore_eos,
            logprobs=s.logprobs,
            logit_bias=tuple(sorted(s.logit_bias.items())),
        )
    except ValueError as exc:
        raise bad_request(str(exc)) from exc
    constraint = compile_grammar(s.grammar, grammars)
    return PreparedRequest(
        req_id=req.req_id,
        prompt_token_ids=ids,
        params=params,
        priority=CLASS_RANK[req.traffic_class],
        arrival_time=req.arrival_time,
        stop=tuple(s for s in req.sampling.stop if s),
        traffic_class=req.traffic_class.value,
        traceparent=req.traceparent,
        constraint=constraint,
        gateway_id=req.gateway_id,
    )
