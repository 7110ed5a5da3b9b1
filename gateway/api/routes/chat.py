"""POST /v1/chat/completions"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from gateway.api.deps import ApiKeyDep, StateDep
from gateway.api.openapi import GENERATION
from gateway.protocol.requests import ChatCompletionRequest
from gateway.serving.event_ids import StreamCursor
from gateway.serving.formats import ChatFormat
from gateway.serving.respond import respond
from gateway.serving.resume import LAST_EVENT_ID_HEADER, resume
from gateway.serving.submit import (
    max_model_len,
    new_req_id,
    refuse_overlong_prompt,
    refuse_too_many_choice_tokens,
    start_generations,
)

router = APIRouter(tags=["openai"])


@router.post("/v1/chat/completions", responses=GENERATION)
async def create_chat_completion(
    body: ChatCompletionRequest, http: Request, principal: ApiKeyDep, state: StateDep
) -> Response:
    if body.stream and (last_event_id := http.headers.get(LAST_EVENT_ID_HEADER)):  # a client resuming
        return await resume(state, http, principal, StreamCursor.parse(last_event_id).completion_id, "chat")
    # Without max_tokens a chat completion may run to the end of the context window (the worker
    # clamps to what the prompt leaves).
    window = await max_model_len(state, body.model)
    messages = body.chat_messages()
    num_bytes = sum(len(m.content.encode("utf-8")) for m in messages)
    await refuse_overlong_prompt(state, body.model, window, "messages", num_bytes=num_bytes)
    refuse_too_many_choice_tokens(state, body.n, body.max_completion(window))
    req_id = new_req_id()
    generations, accepted, lease = await start_generations(
        state,
        http,
        principal,
        req_id,
        body.model,
        body.sampling(window),
        body.priority,
        n=body.n,
        messages=messages,
        tools=body.tool_dicts(),
    )
    fmt = ChatFormat(f"chatcmpl-{req_id}", int(time.time()), body.model, include_usage=body.include_usage,
                     parses_tool_calls=body.parses_tool_calls)
    return await respond(
        state.redis, http, generations, accepted, fmt, lease, body.stream, body.include_usage
    )
