"""``LineExecutor`` on the gateway's own serving code: a batch line is validated, defaulted and answered
exactly as the same body posted to ``/v1/chat/completions`` or ``/v1/completions`` would be."""

from __future__ import annotations

import time
from typing import Any

from pydantic import ValidationError

from gateway.core.errors import OpenAIError
from gateway.core.state import GatewayState
from gateway.protocol.requests import ChatCompletionRequest, CompletionRequest
from gateway.serving.formats import ChatFormat, CompletionFormat, ResponseFormat
from gateway.serving.submit import model_not_found
from gateway.transport.generation import error_of
from shared.messages import GenerateRequest, ReplyEvent, ReplyKind, TokenLogprob, TrafficClass, Usage

# max_tokens of a chat line without one while no worker says its context window: the worker clamps it
# to what the prompt leaves, as for any chat request without max_tokens.
UNBOUNDED_MAX_TOKENS = 1 << 20


class ServingExecutor:
    def __init__(self, state: GatewayState) -> None:
        self._state = state

    async def build(self, endpoint: str, body: dict[str, Any], req_id: str, tenant: str) -> GenerateRequest:
        try:
            parsed: ChatCompletionRequest | CompletionRequest = (
                ChatCompletionRequest.model_validate(body)
                if endpoint == "/v1/chat/completions"
                else CompletionRequest.model_validate(body)
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first.get("loc", ())) or None
            raise OpenAIError(
                400, f"{param}: {first['msg']}" if param else first["msg"], param=param
            ) from None
        if parsed.stream:
            raise OpenAIError(400, "stream is not supported in a batch", param="stream")
        workers = self._state.workers
        live = await workers.live()
        model = parsed.model
        is_known = live.has_model(model) or model in self._state.settings.models
        if not is_known and not await workers.has_request_streams(model):
            raise model_not_found(model)
        common: dict[str, Any] = {"req_id": req_id, "model": model, "tenant": tenant}
        if isinstance(parsed, ChatCompletionRequest):
            sampling = parsed.sampling(live.max_model_len(model) or UNBOUNDED_MAX_TOKENS)
            common["messages"] = parsed.chat_messages()
        else:
            sampling = parsed.sampling(self._state.settings.default_completion_max_tokens)
            common["prompt"] = parsed.prompt_text()
            common["prompt_token_ids"] = parsed.prompt_token_ids()
        return GenerateRequest(
            **common, traffic_class=TrafficClass.BATCH, sampling=sampling, arrival_time=time.time()
        )

    def respond(
        self, endpoint: str, request: GenerateRequest, events: list[ReplyEvent]
    ) -> tuple[int, dict[str, Any]]:
        last = events[-1]
        if last.kind is ReplyKind.ERROR:
            err = error_of(last)
            return err.status, err.body()
        fmt: ResponseFormat = (
            ChatFormat(f"chatcmpl-{request.req_id}", int(time.time()), request.model)
            if endpoint == "/v1/chat/completions"
            else CompletionFormat(f"cmpl-{request.req_id}", int(time.time()), request.model)
        )
        text: list[str] = []
        logprobs: list[TokenLogprob] | None = None
        num_tokens = 0
        prompt_tokens = 0
        for event in events:
            if event.kind is ReplyKind.ACCEPTED and event.usage is not None:
                prompt_tokens = event.usage.prompt_tokens
            if event.kind in (ReplyKind.DELTA, ReplyKind.DONE):
                text.append(event.text)
                num_tokens += len(event.token_ids)
                if event.logprobs is not None:
                    logprobs = (logprobs or []) + list(event.logprobs)
        usage = last.usage or Usage(prompt_tokens=prompt_tokens, completion_tokens=num_tokens)
        return 200, fmt.response("".join(text), last.finish_reason or "stop", usage, logprobs)
