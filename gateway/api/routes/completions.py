"""POST /v1/completions (legacy text completions)"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from gateway.api.deps import ApiKeyDep, StateDep
from gateway.api.openapi import GENERATION
from gateway.protocol.requests import CompletionRequest
from gateway.serving.event_ids import StreamCursor
from gateway.serving.formats import CompletionFormat
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


@router.post("/v1/completions", responses=GENERATION)
async def create_completion(
    body: CompletionRequest, http: Request, principal: ApiKeyDep, state: StateDep
) -> Response:
    if body.stream and (last_event_id := http.headers.get(LAST_EVENT_ID_HEADER)):  # a client resuming
        completion_id = StreamCursor.parse(last_event_id).completion_id
        return await resume(state, http, principal, completion_id, "completion")
    window = await max_model_len(state, body.model)  # 404 / 503 before anything is queued
    text, token_ids = body.prompt_text(), body.prompt_token_ids()
    await refuse_overlong_prompt(
        state, body.model, window, "prompt",
        num_bytes=len(text.encode("utf-8")) if text else 0, num_token_ids=len(token_ids or ()),
    )
    max_tokens = body.max_completion(state.settings.default_completion_max_tokens)
    refuse_too_many_choice_tokens(state, body.n, max_tokens)
    req_id = new_req_id()
    generations, accepted, lease = await start_generations(
        state,
        http,
        principal,
        req_id,
        body.model,
        body.sampling(state.settings.default_completion_max_tokens),
        body.priority,
        n=body.n,
        prompt=text,
        prompt_token_ids=token_ids,
    )
    fmt = CompletionFormat(f"cmpl-{req_id}", int(time.time()), body.model, include_usage=body.include_usage)
    return await respond(
        state.redis, http, generations, accepted, fmt, lease, body.stream, body.include_usage
    )
