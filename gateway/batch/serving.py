"""What a batch line needs from the serving path, done by the gateway's own serving code: a line is
validated, defaulted, carried and answered exactly as the same body posted to ``/v1/chat/completions``
or ``/v1/completions`` would be."""

from __future__ import annotations

import time
from typing import Any

from pydantic import ValidationError

from gateway.core.errors import OpenAIError, validation_error
from gateway.core.state import GatewayState
from gateway.protocol.requests import ChatCompletionRequest, CompletionRequest
from gateway.serving.collect import Fold
from gateway.serving.formats import ChatFormat, CompletionFormat, ResponseFormat
from gateway.serving.submit import known_window
from gateway.transport.generation import Generation, error_of
from shared.messages import GenerateRequest, ReplyEvent, ReplyKind, TrafficClass

# max_tokens of a chat line without one while no worker says its context window: the worker clamps it
# to what the prompt leaves, as for any chat request without max_tokens.
UNBOUNDED_MAX_TOKENS = 1 << 20
CHAT = "/v1/chat/completions"


class ServingExecutor:
    """Builds a line's request, the Generation that carries it, and its answer."""

    def __init__(self, state: GatewayState) -> None:
        self._state = state

    async def build(self, endpoint: str, body: dict[str, Any], req_id: str, tenant: str) -> GenerateRequest:
        """The batch-class request for a line; ``OpenAIError`` (e.g. 400, 404) if it cannot run."""
        try:
            parsed: ChatCompletionRequest | CompletionRequest = (
                ChatCompletionRequest.model_validate(body)
                if endpoint == CHAT
                else CompletionRequest.model_validate(body)
            )
        except ValidationError as exc:
            raise validation_error(exc) from None
        if parsed.stream:
            raise OpenAIError(400, "stream is not supported in a batch", param="stream")
        if parsed.n > 1:
            raise OpenAIError(400, "n > 1 is not supported in a batch; use one line per choice", param="n")
        window = await known_window(self._state, parsed.model)  # a batch waits for workers: no 503
        common: dict[str, Any] = {
            "req_id": req_id, "model": parsed.model, "tenant": tenant,
            "tenant_weight": self._state.keys.weight_of(tenant),
        }
        if isinstance(parsed, ChatCompletionRequest):
            sampling = parsed.sampling(window or UNBOUNDED_MAX_TOKENS)
            common["messages"] = parsed.chat_messages()
            common["tools"] = parsed.tool_dicts()
        else:
            sampling = parsed.sampling(self._state.settings.default_completion_max_tokens)
            common["prompt"] = parsed.prompt_text()
            common["prompt_token_ids"] = parsed.prompt_token_ids()
        return GenerateRequest(
            **common, traffic_class=TrafficClass.BATCH, sampling=sampling, arrival_time=time.time()
        )

    def generation(self, request: GenerateRequest) -> Generation:
        state = self._state
        return Generation(state.redis, state.workers, state.settings, request)

    def respond(
        self, endpoint: str, request: GenerateRequest, events: list[ReplyEvent]
    ) -> tuple[int, dict[str, Any]]:
        """HTTP status and body of the finished request (``events`` end with DONE or ERROR)."""
        last = events[-1]
        if last.kind is ReplyKind.ERROR:
            err = error_of(last)
            return err.status, err.body()
        fmt: ResponseFormat = (
            ChatFormat(f"chatcmpl-{request.req_id}", int(time.time()), request.model,
                       parses_tool_calls=request.tools is not None)
            if endpoint == CHAT
            else CompletionFormat(f"cmpl-{request.req_id}", int(time.time()), request.model)
        )
        fold = Fold()
        for event in events:
            fold.add(event)
        choice, usage = fold.choice(last)
        return 200, fmt.response([choice], usage)
