"""OpenAI's Batch object and the batch status lifecycle."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


# Statuses a runner still has work in; the others are final.
ACTIVE_STATUSES = (
    BatchStatus.VALIDATING,
    BatchStatus.IN_PROGRESS,
    BatchStatus.FINALIZING,
    BatchStatus.CANCELLING,
)
CANCELLABLE_STATUSES = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS)


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchError(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: str = "list"
    data: list[BatchError] = Field(default_factory=list)


class Batch(BaseModel):
    id: str
    object: str = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    metadata: dict[str, str] | None = None


class CreateBatchRequest(BaseModel):
    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None


_WINDOW = re.compile(r"^(\d+)([hm])$")


def window_seconds(completion_window: str) -> int:
    """``24h`` -> 86400; ``ValueError`` for anything but a positive number of hours or minutes."""
    match = _WINDOW.match(completion_window)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"completion_window must look like '24h' or '90m', got {completion_window!r}")
    return int(match.group(1)) * (3600 if match.group(2) == "h" else 60)


def batch_to_fields(batch: Batch, tenant: str) -> dict[str, Any]:
    """The Redis hash of a new batch (``None`` fields left out)."""
    fields: dict[str, Any] = {
        "tenant": tenant,
        **batch.model_dump(exclude={"errors", "metadata", "request_counts"}),
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    fields["metadata"] = BatchMetadata(value=batch.metadata).model_dump_json()
    fields.update(total=0, completed=0, failed=0)
    return fields


def batch_from_fields(data: dict[str, str]) -> Batch:
    scalars: dict[str, Any] = {k: v for k, v in data.items() if k in Batch.model_fields}
    scalars["request_counts"] = RequestCounts(
        total=int(data.get("total", 0)),
        completed=int(data.get("completed", 0)),
        failed=int(data.get("failed", 0)),
    )
    scalars["metadata"] = (
        BatchMetadata.model_validate_json(data["metadata"]).value if "metadata" in data else None
    )
    scalars["errors"] = BatchErrors.model_validate_json(data["errors"]) if "errors" in data else None
    return Batch.model_validate(scalars)


class BatchMetadata(BaseModel):
    value: dict[str, str] | None
