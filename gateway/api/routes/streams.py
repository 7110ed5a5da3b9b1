"""GET /v1/chat/completions/{id}/stream and GET /v1/completions/{id}/stream: a stream again, on any
replica, from the ``Last-Event-ID`` header (all of it without one). The same POST with the header
does the same (``chat``, ``completions``)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from gateway.api.deps import ApiKeyDep, StateDep
from gateway.api.openapi import RESUMED_STREAM
from gateway.serving.resume import resume

router = APIRouter(tags=["busstop"])


@router.get("/v1/chat/completions/{completion_id}/stream", responses=RESUMED_STREAM)
async def resume_chat_stream(
    completion_id: str, http: Request, principal: ApiKeyDep, state: StateDep
) -> Response:
    return await resume(state, http, principal, completion_id, "chat")


@router.get("/v1/completions/{completion_id}/stream", responses=RESUMED_STREAM)
async def resume_completion_stream(
    completion_id: str, http: Request, principal: ApiKeyDep, state: StateDep
) -> Response:
    return await resume(state, http, principal, completion_id, "completion")
