"""OpenAI Batch API: create, get, list and cancel batches (internal keys only)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Query

from gateway.api.openapi import INTERNAL, errors
from gateway.batch.deps import BatchDep, InternalKeyDep
from gateway.batch.lines import ENDPOINTS
from gateway.batch.models import CANCELLABLE_STATUSES, Batch, BatchStatus, CreateBatchRequest, window_seconds
from gateway.batch.store import new_batch_id
from gateway.core.errors import OpenAIError

router = APIRouter(tags=["batches"])


def _not_found(batch_id: str) -> OpenAIError:
    return OpenAIError(404, f"No such Batch object: {batch_id}", param="batch_id", code="batch_not_found")


@router.post("/v1/batches", responses=errors(*INTERNAL, 404, 413))
async def create_batch(body: CreateBatchRequest, principal: InternalKeyDep, service: BatchDep) -> Batch:
    if body.endpoint not in ENDPOINTS:
        raise OpenAIError(400, f"endpoint must be one of {', '.join(ENDPOINTS)}", param="endpoint")
    try:
        window_s = window_seconds(body.completion_window)
    except ValueError as exc:
        raise OpenAIError(400, str(exc), param="completion_window") from None
    input_file = await service.files.get(principal.tenant, body.input_file_id)
    if input_file is None:
        raise OpenAIError(404, f"No such File object: {body.input_file_id}", param="input_file_id")
    if input_file.purpose != "batch":
        raise OpenAIError(400, "the input file's purpose must be 'batch'", param="input_file_id")
    now = int(time.time())
    batch = Batch(
        id=new_batch_id(),
        endpoint=body.endpoint,
        input_file_id=body.input_file_id,
        completion_window=body.completion_window,
        status=BatchStatus.VALIDATING,
        created_at=now,
        expires_at=now + window_s,
        metadata=body.metadata,
    )
    await service.store.create(batch, principal.tenant)
    return batch


@router.get("/v1/batches/{batch_id}", responses=errors(*INTERNAL, 404))
async def get_batch(batch_id: str, principal: InternalKeyDep, service: BatchDep) -> Batch:
    batch = await service.store.get(batch_id, principal.tenant)
    if batch is None:
        raise _not_found(batch_id)
    return batch


@router.get("/v1/batches", responses=errors(*INTERNAL))
async def list_batches(
    principal: InternalKeyDep,
    service: BatchDep,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
) -> dict[str, Any]:
    batches, has_more = await service.store.list_batches(principal.tenant, after, limit)
    return {
        "object": "list",
        "data": [b.model_dump(mode="json") for b in batches],
        "first_id": batches[0].id if batches else None,
        "last_id": batches[-1].id if batches else None,
        "has_more": has_more,
    }


@router.post("/v1/batches/{batch_id}/cancel", responses=errors(*INTERNAL, 404, 409))
async def cancel_batch(batch_id: str, principal: InternalKeyDep, service: BatchDep) -> Batch:
    batch = await service.store.get(batch_id, principal.tenant)
    if batch is None:
        raise _not_found(batch_id)
    if batch.status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
        return batch
    if not await service.store.transition(batch_id, CANCELLABLE_STATUSES, BatchStatus.CANCELLING):
        current = await service.store.get(batch_id, principal.tenant)
        status = current.status.value if current else "gone"
        raise OpenAIError(409, f"a batch that is {status} cannot be cancelled", code="batch_not_cancellable")
    found = await service.store.get(batch_id, principal.tenant)
    assert found is not None
    return found
